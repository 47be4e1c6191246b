//! The fuzz smoke run: each target's committed seed corpus (`fuzz/corpus/TARGET/`), then mutations of
//! it from a fixed seed, through the same entry points cargo-fuzz drives. It proves the targets and
//! corpora work and catches the shallow panics; the long coverage-guided runs are cargo-fuzz's (see
//! docs/security.md). TRAINERD_FUZZ_RUNS sets the mutations per target (default 20,000).

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 3, "{target}: the seed corpus is too small");
    seeds
}

/// xorshift64*: deterministic, so a failure reproduces from the run count alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to JSON and TOML parsers and to number handling.
const INTERESTING: &[u8] = b"{}[]\":,=\n\\-+.0123456789eE\0\xff tfn#'";
const TOKENS: &[&[u8]] =
    &[b"1e309", b"-1", b"18446744073709551616", b"NaN", b"null", b"\"\\ud800\"", b"[[[[[[[[", b"1e-400", b"\"op\""];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(7) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => input.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            3 if at < input.len() => {
                let end = (at + 1 + rng.below(16)).min(input.len());
                input.drain(at..end);
            }
            4 if at < input.len() => {
                let end = (at + 1 + rng.below(32)).min(input.len());
                let copy = input[at..end].to_vec();
                input.splice(at..at, copy);
            }
            5 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(64)).min(other.len());
                input.splice(at..at, other[from..end].iter().copied());
            }
        }
    }
}

fn smoke(target: &str, entry: fn(&[u8])) {
    let runs: usize = std::env::var("TRAINERD_FUZZ_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let seeds = corpus(target);
    let mut rng = Rng(0x7472_6169_6e65_7264);
    let run = |input: &[u8]| {
        if std::panic::catch_unwind(|| entry(input)).is_err() {
            panic!("{target} panicked on {:?}", String::from_utf8_lossy(input));
        }
    };
    for seed in &seeds {
        run(seed);
    }
    for _ in 0..runs {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut input, &seeds);
        run(&input);
    }
}

#[test]
fn the_progress_parser_survives_its_corpus_and_mutations() {
    smoke("progress", super::progress);
}

#[test]
fn the_control_protocol_parser_survives_its_corpus_and_mutations() {
    smoke("control_line", super::control_line);
}

#[test]
fn the_config_parser_survives_its_corpus_and_mutations() {
    smoke("config", super::config);
}
