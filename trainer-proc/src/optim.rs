//! AdamW written over tensors, and the cosine learning-rate schedule with warm-up.
//!
//! tch's optimizers cannot export their state, so a checkpoint could not hold them; this one keeps
//! its moments as named tensors that a checkpoint saves and restores bit for bit.

use tch::{nn, Tensor};

/// AdamW's hyper-parameters.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// AdamW (Loshchilov & Hutter) with bias correction and decoupled weight decay.
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken: the exponent of the bias corrections.
    pub t: u64,
    /// Per trainable variable, in name order: (name, parameter, first moment, second moment).
    pub slots: Vec<(String, Tensor, Tensor, Tensor)>,
}

impl AdamW {
    /// Zeroed moments for every trainable variable of `vs`.
    pub fn new(vs: &nn::VarStore, config: AdamWConfig) -> AdamW {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = vars
            .into_iter()
            .map(|(name, p)| {
                let (m, v) = (p.zeros_like(), p.zeros_like());
                (name, p, m, v)
            })
            .collect();
        AdamW { config, t: 0, slots }
    }

    /// Clears every parameter's gradient.
    pub fn zero_grad(&mut self) {
        for (_, p, _, _) in &mut self.slots {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr` from the gradients left by `backward`.
    pub fn step(&mut self, lr: f64) {
        self.t += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.config;
        let bias1 = 1.0 - beta1.powi(self.t as i32);
        let bias2 = 1.0 - beta2.powi(self.t as i32);
        tch::no_grad(|| {
            for (_, p, m, v) in &mut self.slots {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                m.copy_(&(&*m * beta1 + &g * (1.0 - beta1)));
                v.copy_(&(&*v * beta2 + g.square() * (1.0 - beta2)));
                let update = (&*m / bias1) / ((&*v / bias2).sqrt() + eps) + &*p * weight_decay;
                p.copy_(&(&*p - update * lr));
            }
        });
    }
}

/// The learning rate at `step` (0-based): linear warm-up to `peak`, then cosine decay to a tenth of
/// it at `total` steps. A pure function of the step, so the schedule's position is the step itself.
pub fn cosine_lr(step: u64, peak: f64, warmup: u64, total: u64) -> f64 {
    let floor = peak * 0.1;
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays() {
        assert!((cosine_lr(0, 1.0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((cosine_lr(9, 1.0, 10, 100) - 1.0).abs() < 1e-12);
        assert!((cosine_lr(10, 1.0, 10, 100) - 1.0).abs() < 1e-12);
        assert!(cosine_lr(50, 1.0, 10, 100) < cosine_lr(20, 1.0, 10, 100));
        assert!((cosine_lr(100, 1.0, 10, 100) - 0.1).abs() < 1e-12);
        assert!(cosine_lr(0, 1.0, 0, 100) > 0.99);
    }
}
