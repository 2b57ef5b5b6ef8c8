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

/// The largest safetensors header [`read_safetensors`] accepts, in bytes (16 MiB).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

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

/// What a non-strict load ([`load_state_dict_non_strict`]) left out, like the value PyTorch's
/// `load_state_dict(strict=False)` returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Parameters of the model that the state dict does not have (left as they were).
    pub missing_keys: Vec<String>,
    /// Tensors of the state dict that the model has no parameter for (ignored).
    pub unexpected_keys: Vec<String>,
}

/// Load the tensors of `dict` that name a parameter of `params`, and report the rest. A tensor
/// whose name matches but whose shape does not is still an error (as in PyTorch), and so is a
/// non-finite value; nothing is written unless every matching tensor checks out.
pub fn load_state_dict_non_strict(
    cx: &mut Graph,
    params: &[Param],
    dict: &StateDict,
) -> Result<LoadReport> {
    let stripped = strip_compiled_prefix(dict)?;
    let (present, missing): (Vec<&Param>, Vec<&Param>) = params
        .iter()
        .partition(|p| stripped.contains_key(p.name.as_str()));
    let known: std::collections::HashSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
    let mut unexpected: Vec<String> = (stripped.keys())
        .filter(|k| !known.contains(*k))
        .map(|k| k.to_string())
        .collect();
    unexpected.sort();
    for p in &present {
        check_tensor(p, stripped[p.name.as_str()])?;
    }
    for p in present {
        cx.set_tensor(p.id, 0, Tensor::new(stripped[p.name.as_str()].data.clone()));
        cx.keep_tensors(p.id);
    }
    Ok(LoadReport {
        missing_keys: missing.iter().map(|p| p.name.clone()).collect(),
        unexpected_keys: unexpected,
    })
}

/// One tensor against its parameter: exact shape, finite values.
fn check_tensor(p: &Param, t: &HostTensor) -> Result<()> {
    if t.shape != p.shape {
        return Err(CourseError::Shape {
            what: format!("state-dict tensor '{}'", p.name),
            expected: format!("{:?}", p.shape),
            got: t.shape.clone(),
        });
    }
    if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
        return Err(CourseError::NonFinite(format!(
            "state-dict tensor '{}' holds {} at index {i}; a model with it would compute nonsense",
            p.name, t.data[i]
        )));
    }
    Ok(())
}

/// Check that `dict` fits `params` exactly ([`load_state_dict`]'s checks: every parameter
/// present with its shape and finite values, no other tensor), writing nothing.
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
        check_tensor(p, t)?;
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
            let data =
                crate::graph::tensor::host_values(cx, p.id, &format!("parameter '{}'", p.name))?;
            Ok((
                p.name.clone(),
                HostTensor::new(&p.shape, data.into_owned())?,
            ))
        })
        .collect()
}

/// Read every floating-point tensor of a `.safetensors` file as f32, keys as stored.
///
/// F32 is read as is; F16 and BF16 are widened exactly (every such value is an f32); F64 is
/// rounded to the nearest f32 (a finite value beyond f32's range is an error naming the tensor).
/// Tensors of other dtypes (integer buffers such as step counters, boolean masks) are left out;
/// [`read_safetensors_report`] lists them and the conversions.
pub fn read_safetensors(path: &Path) -> Result<StateDict> {
    Ok(read_safetensors_report(path)?.tensors)
}

/// [`read_safetensors`] plus the string metadata of the file's header.
pub fn read_safetensors_with_metadata(path: &Path) -> Result<(StateDict, HashMap<String, String>)> {
    let file = read_safetensors_report(path)?;
    Ok((file.tensors, file.metadata))
}

/// What [`read_safetensors_report`] found in a file.
#[derive(Clone, Debug, Default)]
pub struct SafetensorsFile {
    /// The floating-point tensors, as f32.
    pub tensors: StateDict,
    /// The header's string metadata.
    pub metadata: HashMap<String, String>,
    /// Tensors converted to f32, with their stored dtype (`F16`, `BF16`, `F64`).
    pub converted: Vec<(String, String)>,
    /// Tensors left out because they are not floating point, with their dtype (`I64`, `BOOL`).
    pub skipped: Vec<(String, String)>,
}

/// Read a `.safetensors` file and say what was converted and what was left out.
pub fn read_safetensors_report(path: &Path) -> Result<SafetensorsFile> {
    let io = |source| CourseError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |problem: String| CourseError::File {
        path: path.to_path_buf(),
        problem,
    };
    // `/dev/zero` would be read until memory runs out, a FIFO would block: refuse both first.
    if !std::fs::metadata(path).map_err(io)?.is_file() {
        return Err(bad(
            "not a regular file (a directory, pipe or device?)".into()
        ));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    // The header is JSON of about 100 bytes a tensor: 16 MiB is ~150 000 tensors, far above any
    // model's, and parsing it stays fast (a forged 1M-tensor header took 18 s and 1.2 GB).
    if let Some(n) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    {
        if n > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "its header claims {n} bytes; this reader accepts up to {MAX_HEADER_BYTES}"
            )));
        }
    }
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    // The header parsed fine; now refuse a key given twice, which JSON parsers resolve silently
    // (the last wins): a forged second "steps_done" or tensor entry must not pass unnoticed.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice::<NoDuplicateKeys>(&bytes[8..8 + n])
        .map_err(|e| bad(format!("its header is ambiguous: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let mut out = SafetensorsFile {
        metadata: header.metadata().clone().unwrap_or_default(),
        ..Default::default()
    };
    for (name, view) in file.tensors() {
        let dtype = view.dtype();
        let Some(data) = to_f32(dtype, view.data()) else {
            out.skipped.push((name, format!("{dtype:?}")));
            continue;
        };
        // An f64 too large for f32 would become infinity without a word: refuse it instead.
        let overflow = |(v, b): (&f32, &[u8])| {
            v.is_infinite() && f64::from_le_bytes(b.try_into().unwrap()).is_finite()
        };
        if dtype == Dtype::F64 {
            if let Some(i) = data
                .iter()
                .zip(view.data().chunks_exact(8))
                .position(overflow)
            {
                let b = &view.data()[8 * i..8 * i + 8];
                return Err(bad(format!(
                    "tensor '{name}' (F64) holds {} at index {i}, beyond the range of f32",
                    f64::from_le_bytes(b.try_into().unwrap())
                )));
            }
        }
        if dtype != Dtype::F32 {
            out.converted.push((name.clone(), format!("{dtype:?}")));
        }
        out.tensors
            .insert(name, HostTensor::new(view.shape(), data)?);
    }
    out.converted.sort();
    out.skipped.sort();
    Ok(out)
}

/// Deserialises any JSON and fails on an object with a key twice, at any depth.
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut a: A,
    ) -> std::result::Result<Self, A::Error> {
        while a.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut a: A,
    ) -> std::result::Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = a.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "key \"{key}\" appears twice"
                )));
            }
            a.next_value::<NoDuplicateKeys>()?;
        }
        Ok(self)
    }
}

/// Little-endian `bytes` of `dtype` as f32, or `None` for a dtype that is not floating point.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let words = |n: usize| bytes.chunks_exact(n);
    Some(match dtype {
        Dtype::F32 => words(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F16 => words(2)
            .map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::BF16 => words(2)
            .map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32())
            .collect(),
        // `as` rounds to nearest, ties to even, as PyTorch's `.float()` does.
        Dtype::F64 => words(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        _ => return None,
    })
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

    /// Write raw tensors (dtype, shape, little-endian bytes) as a safetensors file.
    fn write_raw(path: &Path, tensors: &[(&str, Dtype, &[usize], Vec<u8>)]) {
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, dt, shape, bytes)| {
                let view = safetensors::tensor::TensorView::new(*dt, shape.to_vec(), bytes);
                (n.to_string(), view.unwrap())
            })
            .collect();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    #[test]
    fn half_and_double_tensors_are_widened_and_integer_buffers_skipped() {
        let dir = std::env::temp_dir().join(format!("tc-dtypes-{}", std::process::id()));
        let path = dir.join("mixed.safetensors");
        let le16 = |w: &[u16]| w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let f64s = [0.1f64, -2.5, 1e-50];
        write_raw(
            &path,
            &[
                // f16 bit patterns decoded by hand: 0x3C00 = 1, 0xC000 = -2,
                // 0x3555 = 2^-2 * (1 + 341/1024) = 0.333251953125, 0x0001 = 2^-24 (subnormal).
                (
                    "h",
                    Dtype::F16,
                    &[4],
                    le16(&[0x3C00, 0xC000, 0x3555, 0x0001]),
                ),
                // bf16 is the top half of an f32: 0x3F80 = 1, 0x4049 = 3.140625.
                ("b", Dtype::BF16, &[2], le16(&[0x3F80, 0x4049])),
                (
                    "d",
                    Dtype::F64,
                    &[3],
                    f64s.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
                ("step", Dtype::I64, &[1], 7i64.to_le_bytes().to_vec()),
                ("mask", Dtype::BOOL, &[2], vec![1, 0]),
            ],
        );
        let file = read_safetensors_report(&path).unwrap();
        let t = &file.tensors;
        assert_eq!(t["h"].data, [1.0, -2.0, 0.333_251_95, 2f32.powi(-24)]);
        assert_eq!(t["b"].data, [1.0, 3.140625]);
        // Nearest f32; 1e-50 is below f32's smallest subnormal and rounds to 0, as in PyTorch.
        assert_eq!(t["d"].data, [0.1f32, -2.5, 0.0]);
        assert_eq!(t.len(), 3);
        let names = |v: &[(String, String)]| {
            v.iter()
                .map(|(n, d)| format!("{n}:{d}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&file.converted), ["b:BF16", "d:F64", "h:F16"]);
        assert_eq!(names(&file.skipped), ["mask:BOOL", "step:I64"]);

        // A double beyond f32's range is refused, not turned into infinity.
        write_raw(
            &path,
            &[("big", Dtype::F64, &[1], 1e39f64.to_le_bytes().to_vec())],
        );
        let err = read_safetensors(&path).unwrap_err().to_string();
        assert!(
            err.contains("'big' (F64) holds 1000000000000000000000000000000000000000 at index 0"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn non_strict_load_reports_missing_and_unexpected_and_loads_the_rest() {
        let mut cx = Graph::new();
        let w = tensor::input::<(Dyn<'a'>, Dyn<'c'>)>(&mut cx, "layer.weight");
        let g = tensor::input::<(Dyn<'a'>,)>(&mut cx, "norm.weight");
        let params = vec![Param::of(w, &[2, 3]), Param::of(g, &[2])];
        let d = dict(&[("layer.weight", &[2, 3]), ("num_batches_tracked", &[1])]);
        let report = load_state_dict_non_strict(&mut cx, &params, &d).unwrap();
        assert_eq!(report.missing_keys, ["norm.weight"]);
        assert_eq!(report.unexpected_keys, ["num_batches_tracked"]);
        assert_eq!(
            state_dict(&cx, &params[..1]).unwrap(),
            dict(&[("layer.weight", &[2, 3])])
        );
        // The strict default refuses the same dict, naming the first problem.
        let err = load_state_dict(&mut cx, &params, &d)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing tensor 'norm.weight'"), "{err}");
        // A matching name with the wrong shape is an error even when not strict (as in PyTorch).
        let wrong = dict(&[("layer.weight", &[3, 2])]);
        assert!(load_state_dict_non_strict(&mut cx, &params, &wrong).is_err());
    }

    #[test]
    fn non_finite_weights_are_refused_with_their_name() {
        let mut cx = Graph::new();
        let w = tensor::input::<(Dyn<'a'>,)>(&mut cx, "layer.weight");
        let params = vec![Param::of(w, &[3])];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let d = StateDict::from([(
                "layer.weight".to_string(),
                HostTensor::new(&[3], vec![0.0, bad, 1.0]).unwrap(),
            )]);
            let err = load_state_dict(&mut cx, &params, &d)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("'layer.weight' holds") && err.contains("at index 1"),
                "{err}"
            );
        }
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
        // Not regular files: refused at once, not read forever (`/dev/zero`) or waited on.
        for odd in [Path::new("/dev/zero"), dir.as_path()] {
            let err = read_safetensors(odd).unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
        // A key given twice (here a second "step" in the metadata) is refused, not resolved.
        let header = br#"{"__metadata__":{"step":"1","step":"2"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut forged = (header.len() as u64).to_le_bytes().to_vec();
        forged.extend(header);
        forged.extend(1f32.to_le_bytes());
        std::fs::write(&path, forged).unwrap();
        let err = read_safetensors(&path).unwrap_err().to_string();
        assert!(
            err.contains("ambiguous: key \"step\" appears twice"),
            "{err}"
        );
        // A header length past the limit is refused before any parsing.
        let mut forged = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
        forged.extend(b"{}");
        std::fs::write(&path, forged).unwrap();
        let err = read_safetensors(&path).unwrap_err().to_string();
        assert!(err.contains("header claims 16777217 bytes"), "{err}");
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
