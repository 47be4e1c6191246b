//! The GPU pool: which GPU indices exist and which job holds each. A job gets all the GPUs it asks for
//! or none, and one GPU is never given to two jobs.

use crate::store::records::JobId;
use std::collections::{BTreeSet, HashMap};

/// The pool.
#[derive(Debug, Default, Clone)]
pub struct GpuPool {
    free: BTreeSet<u32>,
    held: HashMap<JobId, Vec<u32>>,
}

impl GpuPool {
    /// A pool of these GPU indices, all free.
    pub fn new(indices: &[u32]) -> GpuPool {
        GpuPool { free: indices.iter().copied().collect(), held: HashMap::new() }
    }

    /// GPUs in the pool.
    pub fn size(&self) -> usize {
        self.free.len() + self.held.values().map(Vec::len).sum::<usize>()
    }

    /// GPUs free now.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Gives `job` `count` GPUs (the lowest free indices), or nothing when fewer are free. A job that
    /// already holds GPUs keeps what it has.
    pub fn assign(&mut self, job: JobId, count: u32) -> Option<Vec<u32>> {
        if let Some(held) = self.held.get(&job) {
            return Some(held.clone());
        }
        if (count as usize) > self.free.len() {
            return None;
        }
        let taken: Vec<u32> = self.free.iter().take(count as usize).copied().collect();
        for g in &taken {
            self.free.remove(g);
        }
        self.held.insert(job, taken.clone());
        Some(taken)
    }

    /// Returns a job's GPUs to the pool.
    pub fn release(&mut self, job: JobId) {
        if let Some(gpus) = self.held.remove(&job) {
            self.free.extend(gpus);
        }
    }

    /// The GPUs a job holds.
    pub fn held_by(&self, job: JobId) -> &[u32] {
        self.held.get(&job).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// The host's GPUs by `nvidia-smi`; none when it is absent or fails (a CPU host).
pub fn detect() -> Vec<u32> {
    let Ok(out) =
        std::process::Command::new("nvidia-smi").args(["--query-gpu=index", "--format=csv,noheader"]).output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64: a seeded generator, so a failure names a reproducible seed.
    fn rng(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |bound| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) % bound
        }
    }

    #[test]
    fn random_submit_finish_cancel_never_overlaps_or_exceeds_the_pool() {
        let seeds: u64 = std::env::var("TRAINERD_PROPTEST_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
        for seed in 0..seeds {
            let mut next = rng(seed);
            let size = 1 + next(8) as u32;
            let mut pool = GpuPool::new(&(0..size).collect::<Vec<_>>());
            let mut running: Vec<JobId> = Vec::new();
            for op in 0..2_000u64 {
                match next(3) {
                    0 => {
                        let job = JobId(op);
                        let want = next(size as u64 + 2) as u32;
                        let free = pool.free();
                        match pool.assign(job, want) {
                            Some(gpus) => {
                                assert_eq!(gpus.len(), want as usize, "seed {seed}: a partial assignment");
                                running.push(job);
                            }
                            None => assert!((want as usize) > free, "seed {seed}: refused with enough free"),
                        }
                    }
                    _ if !running.is_empty() => {
                        // Finish or cancel: either way the job's GPUs come back.
                        let job = running.swap_remove(next(running.len() as u64) as usize);
                        pool.release(job);
                    }
                    _ => {}
                }
                let mut seen = BTreeSet::new();
                for job in &running {
                    for g in pool.held_by(*job) {
                        assert!(*g < size, "seed {seed}: GPU {g} is not in the pool");
                        assert!(seen.insert(*g), "seed {seed}: GPU {g} given to two jobs");
                    }
                }
                assert_eq!(seen.len() + pool.free(), size as usize, "seed {seed}: GPUs leaked");
            }
        }
    }
}
