//! The model: an MLP classifier, and the digest that identifies its weights.

use sha2::{Digest, Sha256};
use tch::{nn, nn::Module, Kind, Tensor};

/// A multi-layer perceptron: linear layers with ReLU between them.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
}

impl Mlp {
    /// Creates the layers under `root`; their initial values come from libtorch's seeded generator.
    pub fn new(root: &nn::Path, inputs: i64, hidden: &[i64], classes: i64) -> Mlp {
        let sizes: Vec<i64> = std::iter::once(inputs).chain(hidden.iter().copied()).chain([classes]).collect();
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| nn::linear(root / format!("layer{i}"), w[0], w[1], Default::default()))
            .collect();
        Mlp { layers }
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(xs.shallow_clone(), |x, (i, layer)| {
            let y = layer.forward(&x);
            if i == last {
                y
            } else {
                y.relu()
            }
        })
    }
}

/// SHA-256 over every variable in name order: its name, its shape and its values as little-endian
/// f32. Equal digests mean bit-identical weights.
pub fn weights_sha256(vs: &nn::VarStore) -> String {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = Sha256::new();
    for (name, tensor) in vars {
        let t = tensor.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous();
        hasher.update(name.as_bytes());
        for dim in t.size() {
            hasher.update(dim.to_le_bytes());
        }
        let n = t.numel();
        let mut values = vec![0f32; n];
        t.copy_data(&mut values, n);
        for v in values {
            hasher.update(v.to_le_bytes());
        }
    }
    format!("{:x}", hasher.finalize())
}
