//! The training data and its order. The order of every epoch is a pure function of (seed, epoch), so
//! a run resumed from any step sees exactly the batches an uninterrupted run would have seen.

use crate::config::{Config, DataSource};
use crate::TrainError;
use tch::{Device, Kind, Tensor};

/// Features and labels, split into training and validation, on the training device.
pub struct Dataset {
    pub train_x: Tensor,
    pub train_y: Tensor,
    pub val_x: Tensor,
    pub val_y: Tensor,
    pub features: i64,
    pub classes: i64,
}

impl Dataset {
    /// Builds or reads the data set the config names, then moves it to `device`.
    pub fn load(config: &Config, device: Device) -> Result<Dataset, TrainError> {
        let set = match &config.data {
            DataSource::Synthetic => synthetic(config),
            DataSource::Csv(path) => csv(path, config.seed)?,
        };
        Ok(Dataset {
            train_x: set.train_x.to_device(device),
            train_y: set.train_y.to_device(device),
            val_x: set.val_x.to_device(device),
            val_y: set.val_y.to_device(device),
            ..set
        })
    }

    /// Training samples.
    pub fn train_len(&self) -> u64 {
        self.train_x.size()[0] as u64
    }
}

/// A classification task labelled by a random "teacher" network over Gaussian inputs, with label
/// noise: learnable, but not trivially. Generated on the CPU so every device sees the same data.
fn synthetic(config: &Config) -> Dataset {
    tch::manual_seed(config.seed as i64);
    let (n_train, n_val) = (config.train_samples as i64, config.val_samples as i64);
    let (features, classes) = (config.features as i64, config.classes as i64);
    let opts = (Kind::Float, Device::Cpu);
    let w1 = Tensor::randn([features, 64], opts) / (features as f64).sqrt();
    let w2 = Tensor::randn([64, classes], opts);
    let x = Tensor::randn([n_train + n_val, features], opts);
    let logits = x.matmul(&w1).tanh().matmul(&w2) + Tensor::randn([n_train + n_val, classes], opts) * 0.5;
    let y = logits.argmax(1, false);
    Dataset {
        train_x: x.narrow(0, 0, n_train),
        train_y: y.narrow(0, 0, n_train),
        val_x: x.narrow(0, n_train, n_val),
        val_y: y.narrow(0, n_train, n_val),
        features,
        classes,
    }
}

/// Reads a CSV of numeric features with an integer class label in the last column. A first line that
/// does not parse as numbers is taken as a header. A fifth of the rows, chosen by the seed, validate.
fn csv(path: &std::path::Path, seed: u64) -> Result<Dataset, TrainError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| TrainError::Data(format!("cannot read {}: {e}", path.display())))?;
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let parsed: Result<Vec<f32>, _> = line.split(',').map(|c| c.trim().parse::<f32>()).collect();
        match parsed {
            Ok(row) => rows.push(row),
            Err(_) if i == 0 => continue,
            Err(e) => return Err(TrainError::Data(format!("{}:{}: {e}", path.display(), i + 1))),
        }
    }
    let width = rows.first().map(Vec::len).unwrap_or(0);
    if rows.len() < 5 || width < 2 {
        return Err(TrainError::Data(format!(
            "{}: need at least 5 rows of 2 or more columns (features, then the label)",
            path.display()
        )));
    }
    if let Some(bad) = rows.iter().position(|r| r.len() != width) {
        return Err(TrainError::Data(format!(
            "{}: row {} has {} columns, not {width}",
            path.display(),
            bad + 1,
            rows[bad].len()
        )));
    }
    let labels: Vec<i64> = rows.iter().map(|r| r[width - 1] as i64).collect();
    if rows.iter().any(|r| r[width - 1] < 0.0 || r[width - 1].fract() != 0.0) {
        return Err(TrainError::Data(format!("{}: labels (last column) must be integers from 0", path.display())));
    }
    let classes = labels.iter().max().copied().unwrap_or(0) + 1;
    let order = permutation(rows.len(), seed, u64::MAX);
    let n_val = (rows.len() / 5).max(1);
    let pick = |idx: &[usize]| {
        let x: Vec<f32> = idx.iter().flat_map(|&i| rows[i][..width - 1].iter().copied()).collect();
        let y: Vec<i64> = idx.iter().map(|&i| labels[i]).collect();
        (Tensor::from_slice(&x).view([idx.len() as i64, (width - 1) as i64]), Tensor::from_slice(&y))
    };
    let (val_x, val_y) = pick(&order[..n_val]);
    let (train_x, train_y) = pick(&order[n_val..]);
    Ok(Dataset { train_x, train_y, val_x, val_y, features: (width - 1) as i64, classes: classes.max(2) })
}

/// The order of epoch `epoch` (0-based): a Fisher–Yates shuffle driven by SplitMix64 seeded from
/// (seed, epoch). Independent of libtorch's generator, so nothing but these two numbers decides it.
pub fn permutation(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut state = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The sample indices of batch `batch` (0-based within its epoch), wrapping around the epoch's order
/// when an epoch asks for more samples than the set holds.
pub fn batch_indices(order: &[usize], batch: u64, batch_size: u64) -> Vec<i64> {
    let start = batch * batch_size;
    (start..start + batch_size).map(|k| order[(k % order.len() as u64) as usize] as i64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_depends_only_on_seed_and_epoch() {
        assert_eq!(permutation(100, 7, 3), permutation(100, 7, 3));
        assert_ne!(permutation(100, 7, 3), permutation(100, 7, 4));
        assert_ne!(permutation(100, 7, 3), permutation(100, 8, 3));
        let mut sorted = permutation(100, 7, 3);
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn batches_wrap_around_a_small_set() {
        let order = vec![2, 0, 1];
        assert_eq!(batch_indices(&order, 1, 2), vec![1, 2]);
    }
}
