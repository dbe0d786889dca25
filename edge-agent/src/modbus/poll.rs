//! One poll and one write over an open Modbus context, whatever the transport.
//!
//! Every request runs under a timeout (tokio-modbus waits forever for an answer that never
//! comes). An exception response fails only its block; a timeout or transport error ends the
//! poll and tells the caller the link is broken (an answer arriving late would otherwise be
//! taken for the next request's).

use std::time::Duration;

use protocols::Value;
use protocols::profile::{ReadBlock, ResolvedPoint, Table, WriteError};
use protocols::quantity::Quality;
use tokio_modbus::ExceptionCode;
use tokio_modbus::client::{Context, Reader, Writer};

use crate::modbus::PollPlan;

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RequestFailure {
    /// The device answered with an exception; the link is fine.
    #[error("exception response {0:?}")]
    Exception(ExceptionCode),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed or the answer was malformed.
    #[error("{0}")]
    Transport(String),
}

impl RequestFailure {
    /// Whether the link must be re-established before the next request.
    pub fn breaks_link(&self) -> bool {
        !matches!(self, RequestFailure::Exception(_))
    }
}

/// What one poll produced.
#[derive(Debug, Default)]
pub struct PollOutcome {
    /// (point index, canonical value, quality) for every point decoded.
    pub values: Vec<(usize, Value, Quality)>,
    /// Requests sent.
    pub requests: u64,
    /// Failed blocks with the reason.
    pub failures: Vec<(usize, RequestFailure)>,
    /// Points whose registers did not decode (NaN, a state outside the enum, ...).
    pub undecodable: Vec<(usize, String)>,
    /// The link must be re-established.
    pub link_broken: bool,
}

impl PollOutcome {
    /// At least one block was read.
    pub fn any_ok(&self) -> bool {
        self.requests > self.failures.len() as u64
    }
}

/// Reads one block of registers (or bits, as 0/1 words).
pub async fn read_block(
    ctx: &mut Context,
    table: Table,
    start: u16,
    count: u16,
    timeout: Duration,
) -> Result<Vec<u16>, RequestFailure> {
    let bits = |v: Vec<bool>| v.into_iter().map(u16::from).collect::<Vec<u16>>();
    let call = async {
        match table {
            Table::Coil => ctx.read_coils(start, count).await.map(|r| r.map(bits)),
            Table::Discrete => ctx
                .read_discrete_inputs(start, count)
                .await
                .map(|r| r.map(bits)),
            Table::Input => ctx.read_input_registers(start, count).await,
            Table::Holding => ctx.read_holding_registers(start, count).await,
        }
    };
    let words = match tokio::time::timeout(timeout, call).await {
        Err(_) => return Err(RequestFailure::Timeout(timeout)),
        Ok(Err(e)) => return Err(RequestFailure::Transport(e.to_string())),
        Ok(Ok(Err(code))) => return Err(RequestFailure::Exception(code)),
        Ok(Ok(Ok(words))) => words,
    };
    if words.len() < count as usize {
        return Err(RequestFailure::Transport(format!(
            "short response: {} of {count} values",
            words.len()
        )));
    }
    Ok(words)
}

/// The quality the agent gives a decoded value: `bad` if physically impossible, `uncertain`
/// outside the point's rated `min`/`max`, else `good`.
pub fn quality_of(point: &ResolvedPoint, value: Value) -> Quality {
    if !point.quantity.is_plausible(&value) {
        return Quality::Bad;
    }
    match value {
        Value::Number(_) if !point.in_range(point.engineering(value)) => Quality::Uncertain,
        _ => Quality::Good,
    }
}

fn decode_block(plan: &PollPlan, block: &ReadBlock, words: &[u16], out: &mut PollOutcome) {
    for &i in &block.points {
        let Some(point) = plan.profile.points.get(i) else {
            continue;
        };
        let at = (point.address - block.start) as usize;
        let width = point.width() as usize;
        let Some(regs) = words.get(at..at + width) else {
            out.undecodable
                .push((i, "registers missing from the response".into()));
            continue;
        };
        match point.decode(regs) {
            Ok(v) => out.values.push((i, v, quality_of(point, v))),
            Err(e) => out.undecodable.push((i, e.to_string())),
        }
    }
}

/// Reads every block of the plan; exceptions skip their block, link failures end the poll.
pub async fn poll_device(ctx: &mut Context, plan: &PollPlan) -> PollOutcome {
    let mut out = PollOutcome::default();
    for (bi, block) in plan.blocks.iter().enumerate() {
        out.requests += 1;
        match read_block(ctx, block.table, block.start, block.count, plan.timeout).await {
            Ok(words) => decode_block(plan, block, &words, &mut out),
            Err(f) => {
                let broken = f.breaks_link();
                out.failures.push((bi, f));
                if broken {
                    out.link_broken = true;
                    break;
                }
            }
        }
    }
    out
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteFailure {
    /// The value does not fit the point (range, type, read-only).
    #[error("{0}")]
    Refused(#[from] WriteError),
    /// The write request failed.
    #[error("write failed: {0}")]
    Write(RequestFailure),
    /// The read-back failed.
    #[error("written, but the read-back failed: {0}")]
    ReadBack(RequestFailure),
    /// The read-back did not decode.
    #[error("written, but the read-back did not decode: {0}")]
    Decode(String),
}

impl WriteFailure {
    /// Whether the link must be re-established.
    pub fn breaks_link(&self) -> bool {
        match self {
            WriteFailure::Write(f) | WriteFailure::ReadBack(f) => f.breaks_link(),
            _ => false,
        }
    }
}

/// Encodes a canonical value through the profile (range check), writes it (FC 6 for one
/// register, 16 for several, 5 for a coil) and reads it back.
pub async fn write_point(
    ctx: &mut Context,
    point: &ResolvedPoint,
    value: Value,
    timeout: Duration,
) -> Result<Value, WriteFailure> {
    let mut words = [0u16; 4];
    let n = point.encode(value, &mut words)?;
    let call = async {
        match point.table {
            Table::Holding if n == 1 => ctx.write_single_register(point.address, words[0]).await,
            Table::Holding => {
                ctx.write_multiple_registers(point.address, &words[..n])
                    .await
            }
            Table::Coil => ctx.write_single_coil(point.address, words[0] != 0).await,
            Table::Input | Table::Discrete => Ok(Err(ExceptionCode::IllegalFunction)),
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => return Err(WriteFailure::Write(RequestFailure::Timeout(timeout))),
        Ok(Err(e)) => {
            return Err(WriteFailure::Write(RequestFailure::Transport(
                e.to_string(),
            )));
        }
        Ok(Ok(Err(code))) => return Err(WriteFailure::Write(RequestFailure::Exception(code))),
        Ok(Ok(Ok(()))) => {}
    }
    let back = read_block(ctx, point.table, point.address, point.width(), timeout)
        .await
        .map_err(WriteFailure::ReadBack)?;
    point
        .decode(&back)
        .map_err(|e| WriteFailure::Decode(e.to_string()))
}
