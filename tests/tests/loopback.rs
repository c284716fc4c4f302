//! Three embedded daemons on loopback UDP: real sockets, real timers. What their applications
//! saw is checked with the simulator's EVS checkers.

use gcs::net::{Event, Gcs};
use gcs::{ProcId, Service, Time};
use std::time::Duration;
use tests::{fast_cluster, Recorder};
use tokio::sync::mpsc::Receiver;
use tokio::time::{timeout, Instant};

struct Member {
    gcs: Option<Gcs>,
    id: ProcId,
    events: Receiver<Event>,
}

/// Collects events from every member until `done` says so or `limit` passes.
async fn pump(
    members: &mut [Member],
    rec: &mut Recorder,
    start: Instant,
    limit: Duration,
    mut done: impl FnMut(&Recorder) -> bool,
) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let mut any = false;
        for m in members.iter_mut() {
            while let Ok(e) = m.events.try_recv() {
                rec.event(m.id, &e, Time(start.elapsed().as_micros() as u64));
                any = true;
            }
        }
        if done(rec) {
            return true;
        }
        if !any {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    false
}

fn last_view_size(rec: &Recorder, p: ProcId) -> usize {
    rec.history
        .procs
        .get(&p)
        .and_then(|log| {
            log.iter().rev().find_map(|e| match e {
                sim::history::Event::View { view, .. }
                    if view.id.kind == gcs::ViewKind::Regular =>
                {
                    Some(view.members.len())
                }
                _ => None,
            })
        })
        .unwrap_or(0)
}

fn delivered(rec: &Recorder, p: ProcId) -> usize {
    rec.history.procs.get(&p).map_or(0, |log| {
        log.iter()
            .filter(|e| matches!(e, sim::history::Event::Delivered { .. }))
            .count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_on_loopback_order_messages_and_survive_a_departure() {
    let cluster = fast_cluster(3);
    let start = Instant::now();
    let mut members = Vec::new();
    for id in 0..3 {
        let (gcs, events) = Gcs::start(cluster.clone(), id, 100_000)
            .await
            .expect("start");
        members.push(Member {
            id: gcs.id(),
            gcs: Some(gcs),
            events,
        });
    }
    let ids: Vec<ProcId> = members.iter().map(|m| m.id).collect();
    let mut rec = Recorder::default();
    assert!(
        pump(
            &mut members,
            &mut rec,
            start,
            Duration::from_secs(10),
            |r| ids.iter().all(|p| last_view_size(r, *p) == 3)
        )
        .await,
        "the three daemons did not form one ring"
    );

    // Every member multicasts every service level, with some large (fragmented) messages.
    let per = 300;
    for k in 0..per {
        for m in &members {
            let service = Service::ALL[(k % 6) as usize];
            let len = if k % 50 == 0 { 40_000 } else { 100 };
            let at = Time(start.elapsed().as_micros() as u64);
            let payload = rec.send(m.id, service, len, at);
            timeout(
                Duration::from_secs(5),
                m.gcs.as_ref().unwrap().multicast(service, payload),
            )
            .await
            .expect("multicast not accepted in time")
            .expect("multicast");
        }
    }
    let total = 3 * per as usize;
    assert!(
        pump(
            &mut members,
            &mut rec,
            start,
            Duration::from_secs(20),
            |r| ids.iter().all(|p| delivered(r, *p) >= total)
        )
        .await,
        "not everything was delivered: {:?}",
        ids.iter().map(|p| delivered(&rec, *p)).collect::<Vec<_>>()
    );

    // One daemon leaves: the other two go through a transitional view to a view of two.
    let gone = members.pop().unwrap();
    let gone_id = gone.id;
    gone.gcs.unwrap().shutdown().await.unwrap();
    rec.crashed(gone_id, Time(start.elapsed().as_micros() as u64));
    let rest: Vec<ProcId> = ids[..2].to_vec();
    assert!(
        pump(
            &mut members,
            &mut rec,
            start,
            Duration::from_secs(10),
            |r| rest.iter().all(|p| last_view_size(r, *p) == 2)
        )
        .await,
        "the survivors did not install a view of two"
    );
    for m in &members {
        let at = Time(start.elapsed().as_micros() as u64);
        let payload = rec.send(m.id, Service::Safe, 64, at);
        m.gcs
            .as_ref()
            .unwrap()
            .multicast(Service::Safe, payload)
            .await
            .unwrap();
    }
    assert!(
        pump(
            &mut members,
            &mut rec,
            start,
            Duration::from_secs(10),
            |r| rest.iter().all(|p| delivered(r, *p) >= total + 2)
        )
        .await
    );

    rec.history.calm_from = Some(Time(start.elapsed().as_micros() as u64));
    rec.history.end = rec.history.calm_from.unwrap();
    rec.history.sends_until = rec.history.end;
    let violations = sim::checkers::check_all(&rec.history);
    assert!(
        violations.is_empty(),
        "{}",
        violations
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for m in members {
        m.gcs.unwrap().shutdown().await.unwrap();
    }
}
