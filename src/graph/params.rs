//! Named parameters, state dicts, and safetensors files.
//!
//! A model lists its parameters ([`Param`]: state-dict name, graph node, shape). A state dict
//! maps those names to host tensors; it is what PyTorch's `model.state_dict()` holds and what a
//! `.safetensors` file stores. Loading checks everything first — a missing, unexpected or
//! misshapen tensor is an error naming it — and only then writes into the graph, so a failed
//! load leaves the model as it was.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use luminal::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::graph::error::{CourseError, Result};
use crate::graph::tensor::{self, HostTensor};

/// The prefix `torch.compile` puts on every state-dict key; stripped on load.
pub const COMPILED_PREFIX: &str = "_orig_mod.";

/// Tensors by state-dict name, sorted (so files and listings are deterministic).
pub type StateDict = BTreeMap<String, HostTensor>;

/// One parameter of a model: its state-dict name, its graph input node and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// State-dict key, e.g. `layers.0.attn.q_proj.weight`.
    pub name: String,
    /// The graph input node that holds the parameter's values.
    pub id: NodeIndex,
    /// Concrete shape, e.g. `[d_model, d_model]`.
    pub shape: Vec<usize>,
}

impl Param {
    /// Describe a graph input made by [`tensor::input`]; the name is the input's name.
    pub fn of<S: Shape>(t: GraphTensor<S>, shape: &[usize]) -> Self {
        Self {
            name: tensor::name_of(t),
            id: t.id,
            shape: shape.to_vec(),
        }
    }

    /// Number of values.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Anything made of named parameters: layers, blocks, whole models.
///
/// A module implements one method, [`visit`](Parameters::visit): it shows each of its own
/// parameters to the [`Visitor`] under a local name (`weight`) and each sub-module under its
/// field name (`attn`, `layers.{i}`). The visitor joins the names with dots, so state-dict
/// names come from the nesting (`layers.0.attn.q_proj.weight`) and no layer is told its full
/// name. Listing parameters ([`params`](Parameters::params)) and remapping graph handles through
/// compilation (luminal's `ToIdsMut`, via [`handles`](Parameters::handles)) both walk the same
/// `visit`, so they cannot disagree. This is the pattern of luminal's own `SerializeModule`.
pub trait Parameters: Clone {
    /// Show every parameter, sub-module and non-parameter graph handle to `v`, in state-dict
    /// order.
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>);

    /// Every parameter with its full name, in state-dict order.
    fn params(&self) -> Vec<Param> {
        // `visit` hands out `&mut` handles (compile needs them); listing only reads, so it walks
        // a copy. Modules hold node ids and sizes, never tensor data: the copy is a few bytes.
        let mut copy = self.clone();
        let mut v = Visitor::default();
        copy.visit(&mut v);
        v.params
            .into_iter()
            .map(|(name, id, shape)| Param {
                name,
                id: *id,
                shape,
            })
            .collect()
    }

    /// Total number of values over all parameters.
    fn num_params(&self) -> usize {
        self.params().iter().map(Param::numel).sum()
    }

    /// Every graph node id the module holds (parameters and buffers such as RoPE tables), for
    /// luminal's `ToIdsMut`: compilation rewrites the graph and remaps these in place.
    fn handles(&mut self) -> Vec<&mut NodeIndex> {
        let mut v = Visitor::default();
        self.visit(&mut v);
        let params = v.params.into_iter().map(|(_, id, _)| id);
        params.chain(v.buffers).collect()
    }
}

/// Collects what a [`Parameters::visit`] shows it, joining nested names with dots.
#[derive(Default)]
pub struct Visitor<'a> {
    prefix: String,
    params: Vec<(String, &'a mut NodeIndex, Vec<usize>)>,
    buffers: Vec<&'a mut NodeIndex>,
}

impl<'a> Visitor<'a> {
    /// A parameter named `name` within the current module, with its concrete shape.
    pub fn param(&mut self, name: &str, id: &'a mut NodeIndex, shape: &[usize]) {
        self.params
            .push((format!("{}{name}", self.prefix), id, shape.to_vec()));
    }

    /// A sub-module, whose names get the prefix `name.`.
    pub fn module(&mut self, name: &str, module: &'a mut impl Parameters) {
        let outer = self.prefix.len();
        self.prefix.push_str(name);
        self.prefix.push('.');
        module.visit(self);
        self.prefix.truncate(outer);
    }

    /// A list of sub-modules, named `name.0`, `name.1`, ... (PyTorch's `nn.ModuleList`).
    pub fn modules(&mut self, name: &str, modules: &'a mut [impl Parameters]) {
        for (i, m) in modules.iter_mut().enumerate() {
            self.module(&format!("{name}.{i}"), m);
        }
    }

    /// Graph handles that are not parameters (constant tables, a tied weight's second handle):
    /// remapped by compilation, absent from the state dict.
    pub fn buffers(&mut self, ids: impl IntoIterator<Item = &'a mut NodeIndex>) {
        self.buffers.extend(ids);
    }
}

/// Label each parameter's graph input with its full state-dict name, so graph pictures, op
/// listings and "wrong shape" errors say `layers.0.attn.q_proj.weight` rather than `weight`.
/// `prefix` is the module's own name where it sits in a model (`"attn"`), or `""` for a whole
/// model; whole-model constructors call this once the model is assembled.
pub fn label_inputs(cx: &mut Graph, module: &impl Parameters, prefix: &str) {
    let dot = if prefix.is_empty() { "" } else { "." };
    for p in module.params() {
        tensor::label_input(cx, p.id, &format!("{prefix}{dot}{}", p.name));
    }
}

/// Load `dict` into the parameters `params` of `cx`. Every parameter must be present with its
/// exact shape, and every tensor in `dict` must belong to a parameter; keys may carry the
/// `_orig_mod.` prefix. Nothing is written unless everything checks out.
pub fn load_state_dict(cx: &mut Graph, params: &[Param], dict: &StateDict) -> Result<()> {
    check_state_dict(params, dict)?;
    let dict = strip_compiled_prefix(dict)?;
    for p in params {
        cx.set_tensor(p.id, 0, Tensor::new(dict[p.name.as_str()].data.clone()));
        cx.keep_tensors(p.id);
    }
    Ok(())
}

/// Check that `dict` fits `params` exactly ([`load_state_dict`]'s checks), writing nothing.
pub fn check_state_dict(params: &[Param], dict: &StateDict) -> Result<()> {
    let dict = strip_compiled_prefix(dict)?;
    for p in params {
        let Some(t) = dict.get(p.name.as_str()) else {
            return Err(CourseError::StateDict(format!(
                "missing tensor '{}' (shape {:?}); the model needs {} tensors, the state dict has {}",
                p.name,
                p.shape,
                params.len(),
                dict.len()
            )));
        };
        if t.shape != p.shape {
            return Err(CourseError::Shape {
                what: format!("state-dict tensor '{}'", p.name),
                expected: format!("{:?}", p.shape),
                got: t.shape.clone(),
            });
        }
    }
    let known: std::collections::HashSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
    if let Some(extra) = dict.keys().find(|k| !known.contains(*k)) {
        return Err(CourseError::StateDict(format!(
            "unexpected tensor '{extra}': the model has no parameter of that name"
        )));
    }
    Ok(())
}

/// Keys without the `_orig_mod.` prefix; a name present both with and without it is an error.
fn strip_compiled_prefix(dict: &StateDict) -> Result<HashMap<&str, &HostTensor>> {
    let mut out = HashMap::new();
    for (k, v) in dict {
        let name = k.strip_prefix(COMPILED_PREFIX).unwrap_or(k);
        if out.insert(name, v).is_some() {
            return Err(CourseError::StateDict(format!(
                "tensor '{name}' appears twice (with and without the '{COMPILED_PREFIX}' prefix)"
            )));
        }
    }
    Ok(out)
}

/// The current values of `params` in `cx`, as a state dict.
pub fn state_dict(cx: &Graph, params: &[Param]) -> Result<StateDict> {
    params
        .iter()
        .map(|p| {
            let data = cx
                .get_tensor_ref(p.id, 0)
                .and_then(|t| t.data.as_any().downcast_ref::<Vec<f32>>())
                .ok_or_else(|| CourseError::NotComputed {
                    what: format!("parameter '{}'", p.name),
                })?;
            Ok((p.name.clone(), HostTensor::new(&p.shape, data.clone())?))
        })
        .collect()
}

/// Read every tensor of a `.safetensors` file (f32 only), keys as stored.
pub fn read_safetensors(path: &Path) -> Result<StateDict> {
    Ok(read_safetensors_with_metadata(path)?.0)
}

/// Every tensor of a `.safetensors` file (f32 only) and the string metadata of its header.
pub fn read_safetensors_with_metadata(path: &Path) -> Result<(StateDict, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|source| CourseError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |problem: String| CourseError::File {
        path: path.to_path_buf(),
        problem,
    };
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut dict = StateDict::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!(
                "tensor '{name}' is {:?}; this course reads F32 (save with tensor.float())",
                view.dtype()
            )));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        dict.insert(name, HostTensor::new(view.shape(), data)?);
    }
    Ok((dict, metadata))
}

/// Write a state dict as a `.safetensors` file (f32, little-endian), atomically, with optional
/// string metadata in the header.
pub fn write_safetensors(
    path: &Path,
    dict: &StateDict,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = dict
        .iter()
        .map(|(k, t)| {
            let raw = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (k.clone(), raw, t.shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, raw, shape)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), raw)
                .map(|v| (k.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| CourseError::File {
            path: path.to_path_buf(),
            problem: format!("cannot encode tensors: {e}"),
        })?;
    let encoded = safetensors::serialize(views, metadata).map_err(|e| CourseError::File {
        path: path.to_path_buf(),
        problem: format!("cannot encode tensors: {e}"),
    })?;
    crate::graph::files::write_atomic(path, &encoded)
}

impl ToIdsMut for Param {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        vec![&mut self.id]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(entries: &[(&str, &[usize])]) -> StateDict {
        entries
            .iter()
            .map(|(k, shape)| {
                let n = shape.iter().product::<usize>();
                let data = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
                (k.to_string(), HostTensor::new(shape, data).unwrap())
            })
            .collect()
    }

    // A toy two-level model: the visitor must build `layers.1.w` from the nesting alone, list
    // buffers only as handles, and the two walks (names, handles) must agree.
    #[derive(Clone)]
    struct Leaf {
        w: NodeIndex,
    }
    impl Parameters for Leaf {
        fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
            v.param("w", &mut self.w, &[2]);
        }
    }
    #[derive(Clone)]
    struct Net {
        embed: Leaf,
        layers: Vec<Leaf>,
        table: NodeIndex,
    }
    impl Parameters for Net {
        fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
            v.module("embed", &mut self.embed);
            v.buffers([&mut self.table]);
            v.modules("layers", &mut self.layers);
        }
    }

    #[test]
    fn visitor_names_come_from_nesting_and_handles_include_buffers() {
        let mut cx = Graph::new();
        let mut leaf = || Leaf {
            w: tensor::input::<(Const<2>,)>(&mut cx, "w").id,
        };
        let (embed, layers) = (leaf(), vec![leaf(), leaf()]);
        let table = tensor::input::<(Const<2>,)>(&mut cx, "table").id;
        let mut net = Net {
            embed,
            layers,
            table,
        };
        let names: Vec<String> = net.params().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["embed.w", "layers.0.w", "layers.1.w"]);
        assert_eq!(net.num_params(), 6);
        let ids: Vec<NodeIndex> = net.handles().into_iter().map(|id| *id).collect();
        let mut want: Vec<NodeIndex> = net.params().iter().map(|p| p.id).collect();
        want.push(table); // buffers come after the parameters
        assert_eq!(ids, want);
        // Handles are the model's own fields: a remap through them moves the model.
        *net.handles()[1] = table;
        assert_eq!(net.layers[0].w, table);

        label_inputs(&mut cx, &net, "net");
        let label = format!("{:?}", cx.graph.node_weight(net.embed.w).unwrap());
        assert!(label.starts_with("net.embed.w"), "{label}");
    }

    #[test]
    fn safetensors_round_trip_is_exact_and_keeps_metadata() {
        let dir = std::env::temp_dir().join(format!("tc-params-{}", std::process::id()));
        let path = dir.join("weights.safetensors");
        let d = dict(&[("a.weight", &[2, 3]), ("b", &[4])]);
        let meta = HashMap::from([("step".to_string(), "7".to_string())]);
        write_safetensors(&path, &d, Some(meta)).unwrap();
        assert_eq!(read_safetensors(&path).unwrap(), d);
        let bytes = std::fs::read(&path).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(header.metadata().as_ref().unwrap()["step"], "7");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn truncated_and_missing_files_are_named() {
        let dir = std::env::temp_dir().join(format!("tc-params-bad-{}", std::process::id()));
        let path = dir.join("w.safetensors");
        write_safetensors(&path, &dict(&[("w", &[8])]), None).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = read_safetensors(&path).unwrap_err().to_string();
        assert!(
            err.contains("w.safetensors") && err.contains("not a valid"),
            "{err}"
        );
        let err = read_safetensors(&dir.join("nope.safetensors")).unwrap_err();
        assert!(err.to_string().contains("nope.safetensors"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn loading_checks_names_shapes_and_prefix_before_writing() {
        let mut cx = Graph::new();
        let w = tensor::input::<(Dyn<'a'>, Dyn<'c'>)>(&mut cx, "layer.weight");
        let params = vec![Param::of(w, &[2, 3])];
        // torch.compile's prefix is accepted.
        let good = dict(&[("_orig_mod.layer.weight", &[2, 3])]);
        load_state_dict(&mut cx, &params, &good).unwrap();
        assert_eq!(
            state_dict(&cx, &params).unwrap()["layer.weight"].data[1],
            -0.5
        );
        // Each failure names the tensor, and leaves the loaded values alone.
        let cases = [
            (dict(&[("other", &[2, 3])]), "missing tensor 'layer.weight'"),
            (dict(&[("layer.weight", &[3, 2])]), "'layer.weight'"),
            (
                dict(&[("layer.weight", &[2, 3]), ("extra.bias", &[1])]),
                "unexpected tensor 'extra.bias'",
            ),
            (
                dict(&[
                    ("layer.weight", &[2, 3]),
                    ("_orig_mod.layer.weight", &[2, 3]),
                ]),
                "appears twice",
            ),
        ];
        for (d, needle) in cases {
            let err = load_state_dict(&mut cx, &params, &d)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        assert_eq!(state_dict(&cx, &params).unwrap(), strip(&good));
    }

    fn strip(d: &StateDict) -> StateDict {
        d.iter()
            .map(|(k, v)| (k.trim_start_matches(COMPILED_PREFIX).to_string(), v.clone()))
            .collect()
    }
}
