//! One daemon of a throughput / latency benchmark. Run one per host (or network namespace):
//!
//! ```text
//! gcs-bench --config cluster.toml --id 0 --size 1024 --senders 0,1,2 --duration 5 --service agreed [--key FILE]
//! ```
//!
//! Every process waits for a view holding all `--expect` daemons, the senders multicast as fast as
//! the ring accepts (or at `--rate` msgs/s), and each process measures, over `--duration` seconds
//! after `--warmup`, the messages it delivers per second and their one-way latency (send time is
//! in the payload; processes on one machine share its clock). Prints one `RESULT` line.

use bytes::{BufMut, Bytes, BytesMut};
use gcs::net::{ClusterConfig, Event, Gcs, Security};
use gcs::{ClusterKey, Service, ViewKind};
use std::time::Duration;

struct Args {
    config: String,
    id: u32,
    size: usize,
    senders: Vec<u32>,
    duration: f64,
    warmup: f64,
    rate: u64,
    service: Service,
    expect: usize,
    key: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        config: String::new(),
        id: 0,
        size: 1024,
        senders: vec![0],
        duration: 5.0,
        warmup: 2.0,
        rate: 0,
        service: Service::Agreed,
        expect: 0,
        key: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv
            .get(i + 1)
            .cloned()
            .ok_or(format!("{} needs a value", argv[i]))?;
        let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", argv[i]);
        match argv[i].as_str() {
            "--config" => a.config = v,
            "--id" => a.id = v.parse().map_err(|e| bad(&e))?,
            "--size" => a.size = v.parse().map_err(|e| bad(&e))?,
            "--senders" => {
                a.senders = v
                    .split(',')
                    .map(|s| s.parse().map_err(|e| bad(&e)))
                    .collect::<Result<_, _>>()?
            }
            "--duration" => a.duration = v.parse().map_err(|e| bad(&e))?,
            "--warmup" => a.warmup = v.parse().map_err(|e| bad(&e))?,
            "--rate" => a.rate = v.parse().map_err(|e| bad(&e))?,
            "--expect" => a.expect = v.parse().map_err(|e| bad(&e))?,
            "--key" => a.key = Some(v),
            "--service" => {
                a.service = match v.as_str() {
                    "agreed" => Service::Agreed,
                    "safe" => Service::Safe,
                    "fifo" => Service::Fifo,
                    "reliable" => Service::Reliable,
                    _ => return Err(format!("unknown service {v}")),
                }
            }
            other => return Err(format!("unknown argument {other}")),
        }
        i += 2;
    }
    if a.config.is_empty() {
        return Err("--config is required".into());
    }
    Ok(a)
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gcs-bench: {e}");
            std::process::exit(2);
        }
    };
    let cluster = match ClusterConfig::from_file(a.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gcs-bench: {e}");
            std::process::exit(2);
        }
    };
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
                    eprintln!("gcs-bench: key {f}: {e}");
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
        let (size, id, rate, service) = (a.size, a.id, a.rate, a.service);
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
    let mut lat_us: Vec<u32> = Vec::new();
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
                    lat_us.push((t.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
                }
            }
            Ok(Some(Event::View(v))) => {
                eprintln!("gcs-bench {}: view change {:?} {:?}", a.id, v.id, v.members)
            }
            Ok(None) | Err(_) => break,
        }
    }
    lat_us.sort_unstable();
    let pct = |p: f64| {
        lat_us
            .get(((lat_us.len() as f64 * p) as usize).min(lat_us.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "RESULT id={} size={} service={:?} senders={} msgs_per_s={:.0} mb_per_s={:.1} p50_us={} p99_us={} samples={}",
        a.id,
        a.size,
        a.service,
        a.senders.len(),
        msgs as f64 / a.duration,
        bytes as f64 / a.duration / 1e6,
        pct(0.50),
        pct(0.99),
        lat_us.len()
    );
    // Keep serving the ring until the others are done measuring, then leave.
    let linger = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(_)) = tokio::time::timeout_at(linger, events.recv()).await {}
    if let Ok(g) = std::sync::Arc::try_unwrap(gcs) {
        let _ = g.shutdown().await;
    }
}
