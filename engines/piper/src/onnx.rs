//! Just enough of the ONNX protobuf to lift a Piper voice's weights and the
//! convolution hyper-parameters out of its exported graph.
//!
//! The graph itself is not executed: its initializers are the PyTorch
//! parameters, and the Conv / ConvTranspose nodes say how each was applied
//! (dilation, padding, stride, groups), which differs between Piper quality
//! levels and is not recoverable from tensor shapes alone.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use prost::Message;

use crate::PiperError;

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(int64, repeated, tag = "8")]
    ints: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(float, repeated, tag = "4")]
    float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    int32_data: Vec<i32>,
    #[prost(int64, repeated, tag = "7")]
    int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

const DATA_TYPE_FLOAT: i32 = 1;
const DATA_TYPE_FLOAT16: i32 = 10;

/// How a convolution node applied its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvAttrs {
    pub dilation: usize,
    /// Left padding; PyTorch-exported Conv1d nodes pad symmetrically.
    pub padding: usize,
    pub stride: usize,
    pub groups: usize,
}

/// The float parameters of a voice by their PyTorch names, and the
/// convolution attributes keyed by the module name (`dec.ups.0`).
pub struct OnnxWeights {
    tensors: HashMap<String, Tensor>,
    convs: HashMap<String, ConvAttrs>,
    /// Constants consumed by a node, keyed `node name -> input index`, for the
    /// few parameters the exporter folded into anonymous constants.
    node_inputs: HashMap<String, Vec<String>>,
}

fn format_err(msg: impl Into<String>) -> PiperError {
    PiperError::Format(msg.into())
}

/// `/flow/flows.0/enc/in_layers.3/Conv` -> `flow.flows.0.enc.in_layers.3`.
fn module_of_node(node_name: &str) -> Option<String> {
    let trimmed = node_name.strip_prefix('/')?;
    let (module, _op) = trimmed.rsplit_once('/')?;
    Some(module.replace('/', "."))
}

fn decode_f32(t: &TensorProto) -> Result<Vec<f32>, PiperError> {
    match t.data_type {
        DATA_TYPE_FLOAT if !t.raw_data.is_empty() => {
            if !t.raw_data.len().is_multiple_of(4) {
                return Err(format_err(format!(
                    "tensor {}: raw data is not f32",
                    t.name
                )));
            }
            Ok(t.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        }
        DATA_TYPE_FLOAT => Ok(t.float_data.clone()),
        DATA_TYPE_FLOAT16 => {
            // float16 stores its bit patterns either packed in raw_data or
            // one per int32_data element.
            let bits: Vec<u16> = if t.raw_data.is_empty() {
                t.int32_data.iter().map(|&v| v as u16).collect()
            } else {
                t.raw_data
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect()
            };
            Ok(bits.into_iter().map(half_to_f32).collect())
        }
        other => Err(format_err(format!(
            "tensor {}: unsupported data type {other}",
            t.name
        ))),
    }
}

fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) & 1) as u32;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if mant == 0 {
            sign << 31
        } else {
            // Subnormal half: renormalise into an f32 exponent.
            let mut e = 127 - 15 + 1;
            let mut m = mant;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            (sign << 31) | ((e as u32) << 23) | ((m & 0x3ff) << 13)
        }
    } else if exp == 0x1f {
        (sign << 31) | (0xff << 23) | (mant << 13)
    } else {
        (sign << 31) | ((exp + 127 - 15) << 23) | (mant << 13)
    };
    f32::from_bits(bits)
}

impl OnnxWeights {
    pub fn parse(bytes: &[u8], device: &Device) -> Result<Self, PiperError> {
        let model =
            ModelProto::decode(bytes).map_err(|e| format_err(format!("not an ONNX model: {e}")))?;
        let graph = model
            .graph
            .ok_or_else(|| format_err("ONNX model has no graph"))?;

        // Which module each anonymous initializer belongs to, from the node
        // that consumes it (the exporter names the coupling-layer convs
        // `onnx::Conv_NNNN` and the embedding after the first graph input).
        let mut alias: HashMap<String, String> = HashMap::new();
        let mut convs = HashMap::new();
        let mut node_inputs = HashMap::new();
        for node in &graph.node {
            node_inputs.insert(node.name.clone(), node.input.clone());
            let is_conv = node.op_type == "Conv" || node.op_type == "ConvTranspose";
            // Embedding tables may be named after the graph input they
            // index (the phoneme table is stored as `sid` in some exports).
            let is_embedding = node.op_type == "Gather"
                && (node.name == "/enc_p/emb/Gather" || node.name == "/emb_g/Gather");
            if !is_conv && !is_embedding {
                continue;
            }
            let Some(module) = module_of_node(&node.name) else {
                continue;
            };
            if let Some(w) = node.input.get(if is_conv { 1 } else { 0 }) {
                alias.insert(w.clone(), format!("{module}.weight"));
            }
            if let Some(b) = node.input.get(2).filter(|_| is_conv) {
                alias.insert(b.clone(), format!("{module}.bias"));
            }
            if is_conv {
                let attr = |name: &str| node.attribute.iter().find(|a| a.name == name);
                let first = |name: &str, default: i64| {
                    attr(name)
                        .and_then(|a| a.ints.first().copied())
                        .unwrap_or(default)
                };
                let pads = attr("pads").map(|a| a.ints.clone()).unwrap_or_default();
                if pads.len() == 2 && pads[0] != pads[1] {
                    return Err(format_err(format!(
                        "{}: asymmetric padding {pads:?}",
                        node.name
                    )));
                }
                let groups = attr("group").map(|a| a.i).unwrap_or(1);
                let to_usize = |v: i64| {
                    usize::try_from(v)
                        .map_err(|_| format_err(format!("{}: bad attribute {v}", node.name)))
                };
                convs.insert(
                    module,
                    ConvAttrs {
                        dilation: to_usize(first("dilations", 1))?,
                        padding: to_usize(pads.first().copied().unwrap_or(0))?,
                        stride: to_usize(first("strides", 1))?,
                        groups: to_usize(groups)?,
                    },
                );
            }
        }

        let mut tensors = HashMap::new();
        for init in &graph.initializer {
            if init.data_type != DATA_TYPE_FLOAT && init.data_type != DATA_TYPE_FLOAT16 {
                continue;
            }
            let dims = init
                .dims
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| format_err(format!("tensor {}: negative dim", init.name)))?;
            let data = decode_f32(init)?;
            let tensor = Tensor::from_vec(data, dims, device)?;
            // A readable PyTorch name wins; otherwise the consumer's name.
            let name = if init.name.contains('.') && !init.name.starts_with("onnx::") {
                init.name.clone()
            } else {
                alias.get(&init.name).cloned().unwrap_or(init.name.clone())
            };
            if let Some(canonical) = alias.get(&init.name) {
                if canonical != &name && !tensors.contains_key(canonical) {
                    tensors.insert(canonical.clone(), tensor.clone());
                }
            }
            tensors.insert(name, tensor);
        }
        Ok(Self {
            tensors,
            convs,
            node_inputs,
        })
    }

    pub fn get(&self, name: &str) -> Result<Tensor, PiperError> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| PiperError::MissingWeight(name.to_string()))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn conv_attrs(&self, module: &str) -> Result<ConvAttrs, PiperError> {
        self.convs
            .get(module)
            .copied()
            .ok_or_else(|| PiperError::MissingWeight(format!("{module} (conv node)")))
    }

    /// The tensor fed as input `index` of graph node `node`.
    pub fn node_input(&self, node: &str, index: usize) -> Result<Tensor, PiperError> {
        let name = self
            .node_inputs
            .get(node)
            .and_then(|inputs| inputs.get(index))
            .ok_or_else(|| PiperError::MissingWeight(format!("{node} input {index}")))?;
        self.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
        TensorProto {
            dims: dims.to_vec(),
            data_type: DATA_TYPE_FLOAT,
            name: name.to_string(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    fn model(nodes: Vec<NodeProto>, initializers: Vec<TensorProto>) -> Vec<u8> {
        ModelProto {
            graph: Some(GraphProto {
                node: nodes,
                name: "test".into(),
                initializer: initializers,
            }),
        }
        .encode_to_vec()
    }

    #[test]
    fn anonymous_conv_weights_are_named_after_their_node() -> Result<(), PiperError> {
        let node = NodeProto {
            input: vec!["x".into(), "onnx::Conv_1".into(), "onnx::Conv_2".into()],
            output: vec!["y".into()],
            name: "/flow/flows.0/enc/in_layers.1/Conv".into(),
            op_type: "Conv".into(),
            attribute: vec![
                AttributeProto {
                    name: "dilations".into(),
                    ints: vec![3],
                    ..Default::default()
                },
                AttributeProto {
                    name: "pads".into(),
                    ints: vec![6, 6],
                    ..Default::default()
                },
            ],
        };
        let bytes = model(
            vec![node],
            vec![
                tensor("onnx::Conv_1", &[2, 1, 1], &[1.0, 2.0]),
                tensor("onnx::Conv_2", &[2], &[3.0, 4.0]),
            ],
        );
        let w = OnnxWeights::parse(&bytes, &Device::Cpu)?;
        let weight = w.get("flow.flows.0.enc.in_layers.1.weight")?;
        assert_eq!(weight.dims(), &[2, 1, 1]);
        assert_eq!(
            w.get("flow.flows.0.enc.in_layers.1.bias")?
                .to_vec1::<f32>()?,
            vec![3.0, 4.0]
        );
        let attrs = w.conv_attrs("flow.flows.0.enc.in_layers.1")?;
        assert_eq!((attrs.dilation, attrs.padding, attrs.stride), (3, 6, 1));
        assert!(matches!(
            w.get("dec.conv_pre.weight"),
            Err(PiperError::MissingWeight(_))
        ));
        Ok(())
    }

    #[test]
    fn graph_without_the_network_is_a_missing_weight() -> Result<(), PiperError> {
        let bytes = model(vec![], vec![tensor("unrelated", &[1], &[0.0])]);
        let w = OnnxWeights::parse(&bytes, &Device::Cpu)?;
        let err = crate::model::Vits::load(&w, &Device::Cpu);
        assert!(matches!(err, Err(PiperError::MissingWeight(_))), "{err:?}");
        Ok(())
    }

    #[test]
    fn no_graph_is_a_format_error() {
        let err = OnnxWeights::parse(&ModelProto { graph: None }.encode_to_vec(), &Device::Cpu);
        assert!(matches!(err, Err(PiperError::Format(_))));
    }

    #[test]
    fn half_floats_decode() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x3555), 0.333_251_95);
        assert_eq!(half_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(half_to_f32(0x0000), 0.0);
    }
}
