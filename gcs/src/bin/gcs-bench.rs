//! One daemon of a throughput / latency benchmark. Run one per host (or network namespace):
//!
//! ```text
//! gcs-bench --config cluster.toml --id 0 [--size 1024] [--senders 0,1,2] [--duration 5] \
//!           [--warmup 2] [--rate N] [--service agreed|safe|fifo|reliable] [--expect N] [--key FILE]
//! ```
//!
//! Every process waits for a view holding all `--expect` daemons, the senders multicast as fast as
//! the ring accepts (or at `--rate` msgs/s), and each process measures, over `--duration` seconds
//! after `--warmup`, the messages it delivers per second and their one-way latency (send time is
//! in the payload; processes on one machine share its clock). Prints one `RESULT` line.

use bytes::{BufMut, Bytes, BytesMut};
use gcs::net::{ClusterConfig, Event, Gcs, Security};
use gcs::{ClusterKey, Service, ViewKind};
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::time::Duration;

/// One daemon of a throughput / latency benchmark: joins the ring of `--config` as daemon `--id`,
/// waits for the others, then measures the messages it delivers and their one-way latency over
/// `--duration` seconds. Prints one RESULT line.
#[derive(clap::Parser)]
#[command(name = "gcs-bench", version)]
struct Args {
    /// The cluster configuration (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// This daemon's id in the configuration.
    #[arg(long, default_value_t = 0)]
    id: u32,
    /// Payload bytes of each message (at least 20 are sent: the sender, a sequence number and the
    /// send time).
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    size: usize,
    /// The daemons that send, comma-separated ids.
    #[arg(long, value_name = "IDS", value_delimiter = ',', default_value = "0")]
    senders: Vec<u32>,
    /// Seconds measured, after the warm-up (more than 0, at most 10^6).
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0, value_parser = measured_seconds)]
    duration: f64,
    /// Seconds delivered but not measured, from the start of sending (at most 10^6).
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0, value_parser = seconds)]
    warmup: f64,
    /// Messages per second each sender offers (at most 10^9); 0 sends as fast as the ring
    /// accepts.
    #[arg(
        long,
        value_name = "MSGS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u64).range(0..=MAX_RATE)
    )]
    rate: u64,
    /// The ordering service of the messages sent.
    #[arg(long, value_enum, default_value_t = BenchService::Agreed)]
    service: BenchService,
    /// Daemons the view must hold before sending starts; 0 means all of the configuration.
    #[arg(long, value_name = "N", default_value_t = 0)]
    expect: usize,
    /// The cluster key file (made by `gcs-keygen`); without it, plaintext datagrams.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

/// The longest warm-up or measurement (11 days): beyond any benchmark, and low enough that the
/// deadlines computed from it (nanoseconds since 1970 in a u64, tokio instants) cannot overflow.
const MAX_SECONDS: f64 = 1_000_000.0;

/// The highest `--rate`: one message a nanosecond. Above it the sending interval would round to
/// zero, which tokio refuses with a panic.
const MAX_RATE: u64 = 1_000_000_000;

/// A warm-up: a number of seconds from 0 to `MAX_SECONDS` (NaN, infinities and negative values
/// would panic when made into a `Duration`).
fn seconds(v: &str) -> Result<f64, String> {
    let s: f64 = v.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=MAX_SECONDS).contains(&s) {
        return Err(format!("must be from 0 to {MAX_SECONDS} seconds"));
    }
    Ok(s)
}

/// A measurement: as `seconds`, and not 0, since the rates are divided by it.
fn measured_seconds(v: &str) -> Result<f64, String> {
    let s = seconds(v)?;
    if s == 0.0 {
        return Err("must be more than 0 seconds".into());
    }
    Ok(s)
}

/// The services a benchmark can ask for (the names scripts pass to `--service`).
#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchService {
    /// One total order seen by all members.
    Agreed,
    /// Agreed, delivered once every member has the message.
    Safe,
    /// In the order each sender sent.
    Fifo,
    /// No order promised.
    Reliable,
}

impl From<BenchService> for Service {
    fn from(s: BenchService) -> Service {
        match s {
            BenchService::Agreed => Service::Agreed,
            BenchService::Safe => Service::Safe,
            BenchService::Fifo => Service::Fifo,
            BenchService::Reliable => Service::Reliable,
        }
    }
}

#[allow(clippy::disallowed_methods)] // a benchmark reads the wall clock
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn payload(size: usize, id: u32, seq: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(20));
    b.put_u32_le(id);
    b.put_u64_le(seq);
    b.put_u64_le(now_ns());
    b.resize(size.max(20), 0xAB);
    b.freeze()
}

/// The latency below which `fraction` of the samples fall, by the rank this benchmark has always
/// reported: the sample at index floor(fraction * n) of the sorted samples (so the p50 of an even
/// count is the upper middle one). hdrhistogram's own rank is ceil(fraction * n), one sample
/// lower whenever fraction * n is whole, which moved a sparse p99 tail by a few percent.
fn percentile(latency_us: &Histogram<u64>, fraction: f64) -> u64 {
    let n = latency_us.len();
    if n == 0 {
        return 0;
    }
    let rank = ((n as f64 * fraction) as u64).saturating_add(1).min(n);
    // value_at_quantile takes the ceil(q * n)-th sample: half a sample below `rank` is exactly
    // `rank`, whatever the rounding of q * n.
    latency_us.value_at_quantile((rank as f64 - 0.5) / n as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Usage errors exit 2 with clap's message, as before.
    let a = <Args as clap::Parser>::parse();
    let service = Service::from(a.service);
    // One-way latencies in microseconds, to 3 significant digits: exact below 2048 us, within
    // 0.1 % above; longer than u32::MAX us (71 minutes) counts as that, as when every sample
    // was kept as a u32. A fixed 184 KiB however long the run, where keeping every sample took
    // 4 bytes a message and a sort at the end.
    let mut latency_us = match Histogram::<u64>::new_with_bounds(1, u64::from(u32::MAX), 3) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("gcs-bench: latency histogram: {e}");
            std::process::exit(1);
        }
    };
    let cluster = match ClusterConfig::from_file(&a.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gcs-bench: {e}");
            std::process::exit(2);
        }
    };
    // A message above the ring's limit is refused at every send, which used to end the sender
    // silently and report 0 msgs/s; a size beyond memory panicked building the payload.
    let max_message_size = cluster.protocol().max_message_size;
    let sent_size = a.size.max(20);
    if sent_size > max_message_size {
        eprintln!(
            "gcs-bench: messages of {sent_size} bytes (--size) are above the ring's \
             max_message_size {max_message_size}"
        );
        std::process::exit(2);
    }
    let expect = if a.expect == 0 {
        cluster.daemons.len()
    } else {
        a.expect
    };
    let security = match &a.key {
        Some(f) => {
            let key = std::fs::read_to_string(f)
                .map_err(|e| e.to_string())
                .and_then(|t| ClusterKey::from_key_file(&t).map_err(|e| e.to_string()));
            match key {
                Ok(key) => Security::Key { id: 1, key },
                Err(e) => {
                    eprintln!("gcs-bench: key {}: {e}", f.display());
                    std::process::exit(2);
                }
            }
        }
        None => Security::Plaintext,
    };
    let (gcs, mut events) = match Gcs::start_with(cluster, a.id, security, 1 << 16).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("gcs-bench: {e}");
            std::process::exit(1);
        }
    };
    // Wait (bounded) for the full ring.
    let formed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = events.recv().await {
            if let Event::View(v) = e {
                if v.id.kind == ViewKind::Regular && v.members.len() == expect {
                    return true;
                }
            }
        }
        false
    })
    .await;
    if !matches!(formed, Ok(true)) {
        eprintln!("gcs-bench: no view of {expect} daemons within 30 s");
        std::process::exit(1);
    }
    let gcs = std::sync::Arc::new(gcs);
    let total = a.warmup + a.duration;
    if a.senders.contains(&a.id) {
        let g = gcs.clone();
        let (size, id, rate) = (a.size, a.id, a.rate);
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let stop = start + Duration::from_secs_f64(total + 1.0);
            let mut seq = 0u64;
            let mut tick = (rate > 0).then(|| {
                let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while tokio::time::Instant::now() < stop {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                if g.multicast(service, payload(size, id, seq)).await.is_err() {
                    break;
                }
                seq += 1;
            }
        });
    }
    let t0 = now_ns();
    let from = t0 + (a.warmup * 1e9) as u64;
    let until = from + (a.duration * 1e9) as u64;
    let (mut msgs, mut bytes) = (0u64, 0u64);
    loop {
        let left = until.saturating_sub(now_ns());
        if left == 0 {
            break;
        }
        match tokio::time::timeout(Duration::from_nanos(left), events.recv()).await {
            Ok(Some(Event::Message(d))) => {
                let t = now_ns();
                if t >= from && d.payload.len() >= 20 {
                    msgs += 1;
                    bytes += d.payload.len() as u64;
                    let sent = u64::from_le_bytes(d.payload[12..20].try_into().expect("8 bytes"));
                    latency_us.saturating_record(t.saturating_sub(sent) / 1000);
                }
            }
            Ok(Some(Event::View(v))) => {
                eprintln!("gcs-bench {}: view change {:?} {:?}", a.id, v.id, v.members)
            }
            Ok(None) | Err(_) => break,
        }
    }
    println!(
        "RESULT id={} size={} service={:?} senders={} msgs_per_s={:.0} mb_per_s={:.1} p50_us={} p99_us={} samples={}",
        a.id,
        a.size,
        service,
        a.senders.len(),
        msgs as f64 / a.duration,
        bytes as f64 / a.duration / 1e6,
        percentile(&latency_us, 0.50),
        percentile(&latency_us, 0.99),
        latency_us.len()
    );
    // Keep serving the ring until the others are done measuring, then leave.
    let linger = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(_)) = tokio::time::timeout_at(linger, events.recv()).await {}
    if let Ok(g) = std::sync::Arc::try_unwrap(gcs) {
        let _ = g.shutdown().await;
    }
}
