//! Fault injection for supervision tests: `TRAINER_FAULT` makes the trainer misbehave on purpose.
//!
//! - `crash@STEP`: SIGKILL itself after STEP steps;
//! - `hang@STEP`: stop progress and heartbeats after STEP steps, and stay alive, deaf to SIGTERM;
//! - `stuck@STEP`: the training loop blocks forever after STEP steps while the heartbeat thread goes on
//!   beating (a rank waiting in a collective on a dead peer): only a progress deadline sees it;
//! - `nan@STEP`, `spike@STEP`: from STEP on, report the loss as NaN, or 100 times its value (the
//!   training itself is untouched, so a rollback ends with the weights of an uninterrupted run);
//! - `exit@STEP:CODE`: exit with CODE after STEP steps;
//! - `slow-eval@SECONDS`: each evaluation takes that much longer, while heartbeats go on.
//!
//! A fault fires on attempt 1 only (`TRAINERD_ATTEMPT`), unless `TRAINER_FAULT_EVERY_ATTEMPT=1`.

use crate::TrainError;
use std::time::Duration;

/// The variable naming the fault.
pub const FAULT_VAR: &str = "TRAINER_FAULT";
/// The variable that makes a fault fire on every attempt.
pub const EVERY_ATTEMPT_VAR: &str = "TRAINER_FAULT_EVERY_ATTEMPT";

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    Crash { step: u64 },
    Hang { step: u64 },
    Stuck { step: u64 },
    Nan { step: u64 },
    Spike { step: u64 },
    Exit { step: u64, code: i32 },
    SlowEval { seconds: f64 },
}

/// Parses a fault specification; the error says what the accepted forms are.
pub fn parse(spec: &str) -> Result<Fault, TrainError> {
    let bad = || {
        TrainError::Config(format!(
            "{FAULT_VAR}={spec:?}: expected crash@STEP, hang@STEP, stuck@STEP, nan@STEP, spike@STEP, exit@STEP:CODE or slow-eval@SECONDS"
        ))
    };
    let (kind, arg) = spec.split_once('@').ok_or_else(bad)?;
    let step = || arg.parse::<u64>().map_err(|_| bad());
    Ok(match kind {
        "crash" => Fault::Crash { step: step()? },
        "hang" => Fault::Hang { step: step()? },
        "stuck" => Fault::Stuck { step: step()? },
        "nan" => Fault::Nan { step: step()? },
        "spike" => Fault::Spike { step: step()? },
        "exit" => {
            let (s, c) = arg.split_once(':').ok_or_else(bad)?;
            Fault::Exit { step: s.parse().map_err(|_| bad())?, code: c.parse().map_err(|_| bad())? }
        }
        "slow-eval" => {
            let seconds = arg.parse::<f64>().map_err(|_| bad())?;
            if !(seconds.is_finite() && seconds >= 0.0) {
                return Err(bad());
            }
            Fault::SlowEval { seconds }
        }
        _ => return Err(bad()),
    })
}

/// The fault armed for this attempt, if any.
pub fn from_env(attempt: u64) -> Result<Option<Fault>, TrainError> {
    let Ok(spec) = std::env::var(FAULT_VAR) else {
        return Ok(None);
    };
    if spec.is_empty() {
        return Ok(None);
    }
    let fault = parse(&spec)?;
    let every = std::env::var(EVERY_ATTEMPT_VAR).is_ok_and(|v| v == "1");
    Ok((attempt == 1 || every).then_some(fault))
}

/// The loss to report at `step` for a training loss of `loss`.
pub fn reported_loss(fault: Option<Fault>, step: u64, loss: f64) -> f64 {
    match fault {
        Some(Fault::Nan { step: from }) if step >= from => f64::NAN,
        Some(Fault::Spike { step: from }) if step >= from => loss * 100.0,
        _ => loss,
    }
}

/// How much longer each evaluation takes.
pub fn eval_delay(fault: Option<Fault>) -> Duration {
    match fault {
        Some(Fault::SlowEval { seconds }) => Duration::from_secs_f64(seconds),
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form_parses() {
        assert_eq!(parse("crash@12").unwrap(), Fault::Crash { step: 12 });
        assert_eq!(parse("hang@3").unwrap(), Fault::Hang { step: 3 });
        assert_eq!(parse("stuck@4").unwrap(), Fault::Stuck { step: 4 });
        assert_eq!(parse("nan@5").unwrap(), Fault::Nan { step: 5 });
        assert_eq!(parse("spike@6").unwrap(), Fault::Spike { step: 6 });
        assert!(reported_loss(Some(Fault::Nan { step: 5 }), 5, 1.0).is_nan());
        assert_eq!(reported_loss(Some(Fault::Nan { step: 5 }), 4, 1.0), 1.0);
        assert_eq!(reported_loss(Some(Fault::Spike { step: 5 }), 6, 0.5), 50.0);
        assert_eq!(parse("exit@5:75").unwrap(), Fault::Exit { step: 5, code: 75 });
        assert_eq!(parse("slow-eval@1.5").unwrap(), Fault::SlowEval { seconds: 1.5 });
        for bad in ["crash", "crash@x", "exit@5", "boom@1", "slow-eval@-1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
