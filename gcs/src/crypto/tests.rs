use super::*;
use proptest::prelude::*;

fn key(b: u8) -> ClusterKey {
    ClusterKey::from_bytes([b; KEY_LEN])
}

fn pair() -> (PacketSecurity, PacketSecurity) {
    (
        PacketSecurity::new(ProcId::new(1, 10), 0, &key(1)),
        PacketSecurity::new(ProcId::new(2, 20), 0, &key(1)),
    )
}

#[test]
fn round_trip_and_header() {
    let (mut a, mut b) = pair();
    let s = a.seal(Dest::All, b"hello").unwrap();
    assert_eq!(s.len(), 5 + SEALED_OVERHEAD);
    assert_eq!(
        SealedHeader::decode(&s).unwrap(),
        SealedHeader {
            key_id: 0,
            sender: ProcId::new(1, 10),
            counter: 0,
            dest: Dest::All,
        }
    );
    // The payload is not in clear.
    assert!(!s.windows(5).any(|w| w == b"hello"));
    assert_eq!(&b.open(&s).unwrap()[..], b"hello");
    let empty = a.seal(Dest::All, b"").unwrap();
    assert_eq!(&b.open(&empty).unwrap()[..], b"");
    assert_eq!(SealedHeader::decode(&empty).unwrap().counter, 1);
    assert_eq!(a.stats().sealed, 2);
    assert_eq!(b.stats().opened, 2);
    assert_eq!(b.stats().dropped(), 0);
}

#[test]
fn replay_old_counter_and_old_incarnation_are_refused() {
    let (mut a, mut b) = pair();
    let first = a.seal(Dest::All, b"x").unwrap();
    b.open(&first).unwrap();
    assert_eq!(b.open(&first), Err(CryptoError::Replay));
    // Out of order within the window is fine, once.
    let later: Vec<Bytes> = (0..10).map(|_| a.seal(Dest::All, b"y").unwrap()).collect();
    for s in later.iter().rev() {
        b.open(s).unwrap();
    }
    for s in &later {
        assert_eq!(b.open(s), Err(CryptoError::Replay));
    }
    // Far behind the window.
    let stale = a.seal(Dest::All, b"stale").unwrap();
    for _ in 0..WINDOW {
        let s = a.seal(Dest::All, b"z").unwrap();
        b.open(&s).unwrap();
    }
    assert_eq!(b.open(&stale), Err(CryptoError::TooOld));
    // The node restarts with a greater incarnation: its old run is refused from then on.
    let old_run = a.seal(Dest::All, b"old").unwrap();
    let mut a2 = PacketSecurity::new(ProcId::new(1, 11), 0, &key(1));
    b.open(&a2.seal(Dest::All, b"new").unwrap()).unwrap();
    assert_eq!(b.open(&old_run), Err(CryptoError::OldIncarnation));
    let st = b.stats();
    assert_eq!(
        (st.replayed, st.too_old, st.old_incarnation),
        (11, 1, 1),
        "{st:?}"
    );
}

#[test]
fn wrong_key_unknown_key_and_plain_datagrams_are_refused() {
    let (mut a, mut b) = pair();
    let mut intruder = PacketSecurity::new(ProcId::new(3, 1), 0, &key(2));
    assert_eq!(
        b.open(&intruder.seal(Dest::All, b"evil").unwrap()),
        Err(CryptoError::Authentication)
    );
    let mut other_id = PacketSecurity::new(ProcId::new(3, 1), 9, &key(1));
    assert_eq!(
        b.open(&other_id.seal(Dest::All, b"evil").unwrap()),
        Err(CryptoError::UnknownKey(9))
    );
    assert_eq!(
        b.open(b"SB\x01\x02a plain core datagram, long enough for a header"),
        Err(CryptoError::BadMagic)
    );
    assert_eq!(b.open(b"short"), Err(CryptoError::Truncated));
    let mut v2 = a.seal(Dest::All, b"x").unwrap().to_vec();
    v2[2] = 2;
    assert_eq!(b.open(&v2), Err(CryptoError::Version(2)));
    let st = b.stats().clone();
    assert_eq!(
        (st.auth_failed, st.unknown_key, st.malformed, st.opened),
        (1, 1, 3, 0)
    );
    // A forged datagram does not move the replay window: the genuine one still opens.
    let genuine = a.seal(Dest::All, b"genuine").unwrap();
    let mut forged = genuine.to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(b.open(&forged), Err(CryptoError::Authentication));
    assert_eq!(&b.open(&genuine).unwrap()[..], b"genuine");
}

#[test]
fn rotation_overlap_and_key_management() {
    let (mut a, mut b) = pair();
    // Step 1: both add key 1.
    a.add_key(1, &key(7)).unwrap();
    b.add_key(1, &key(7)).unwrap();
    assert_eq!(a.add_key(1, &key(7)), Ok(()));
    assert_eq!(a.add_key(1, &key(8)), Err(CryptoError::KeyIdInUse(1)));
    // Step 2: a switches first; b still sends with 0. Both directions open.
    a.set_send_key(1).unwrap();
    let from_a = a.seal(Dest::All, b"new").unwrap();
    assert_eq!(SealedHeader::decode(&from_a).unwrap().key_id, 1);
    assert_eq!(&b.open(&from_a).unwrap()[..], b"new");
    assert_eq!(
        &a.open(&b.seal(Dest::All, b"old").unwrap()).unwrap()[..],
        b"old"
    );
    b.set_send_key(1).unwrap();
    // Step 3: remove the old key.
    assert_eq!(a.remove_key(1), Err(CryptoError::RemoveSendKey(1)));
    a.remove_key(0).unwrap();
    b.remove_key(0).unwrap();
    assert_eq!(a.remove_key(0), Err(CryptoError::NoSuchKey(0)));
    assert_eq!(a.set_send_key(0), Err(CryptoError::NoSuchKey(0)));
    assert_eq!(a.key_ids(), vec![1]);
    assert_eq!(
        &a.open(&b.seal(Dest::All, b"after").unwrap()).unwrap()[..],
        b"after"
    );
    // A straggler sealed with the removed key is refused.
    let mut straggler = PacketSecurity::new(ProcId::new(5, 1), 0, &key(1));
    assert_eq!(
        a.open(&straggler.seal(Dest::All, b"late").unwrap()),
        Err(CryptoError::UnknownKey(0))
    );
    // Same key bytes under the same id are not enough: the nonce still differs per sender.
    assert_eq!(a.send_key(), 1);
}

#[test]
fn unicast_to_another_node_is_refused() {
    let (mut a, mut b) = pair();
    let mut c = PacketSecurity::new(ProcId::new(3, 30), 0, &key(1));
    let to_b = a.seal(Dest::Node(2), b"token").unwrap();
    let to_c = a.seal(Dest::Node(3), b"token").unwrap();
    assert_eq!(c.open(&to_b), Err(CryptoError::Misdirected(2)));
    assert_eq!(&b.open(&to_b).unwrap()[..], b"token");
    assert_eq!(b.open(&to_c), Err(CryptoError::Misdirected(3)));
    assert_eq!(&c.open(&to_c).unwrap()[..], b"token");
    assert_eq!((b.stats().misdirected, c.stats().misdirected), (1, 1));
    let own = b.seal(Dest::All, b"me").unwrap();
    assert_eq!(b.open(&own), Err(CryptoError::OwnDatagram));
    assert_eq!((b.stats().looped_back, b.stats().dropped()), (1, 1));
    let mut reserved = a.seal(Dest::All, b"x").unwrap().to_vec();
    reserved[26] = 1;
    assert_eq!(b.open(&reserved), Err(CryptoError::Malformed));
}

#[test]
fn debug_does_not_print_keys() {
    let (a, _) = pair();
    let d = format!("{a:?}");
    assert!(!d.contains("0101"), "{d}");
}

proptest! {
    #[test]
    fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let (_, mut b) = pair();
        let _ = b.open(&bytes);
        prop_assert_eq!(b.stats().opened + b.stats().dropped(), 1);
    }

    #[test]
    fn open_never_panics_with_a_valid_header(
        key_id in 0u8..3,
        node in 0u32..4,
        counter in any::<u64>(),
        tail in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let (_, mut b) = pair();
        let dest = if node == 3 { Dest::All } else { Dest::Node(node) };
        let h = SealedHeader { key_id, sender: ProcId::new(node, 1), counter, dest }.encode();
        let mut d = h.to_vec();
        d.extend_from_slice(&tail);
        prop_assert!(b.open(&d).is_err());
    }

    #[test]
    fn seal_open_round_trip(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20)) {
        let (mut a, mut b) = pair();
        for m in &msgs {
            let s = a.seal(Dest::All, m).unwrap();
            prop_assert_eq!(&b.open(&s).unwrap()[..], &m[..]);
        }
    }

    #[test]
    fn tampering_with_any_byte_fails(
        msg in proptest::collection::vec(any::<u8>(), 0..100),
        pos in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let (mut a, mut b) = pair();
        let mut s = a.seal(Dest::All, &msg).unwrap().to_vec();
        let i = pos.index(s.len());
        s[i] ^= flip;
        prop_assert!(b.open(&s).is_err());
        // Nothing was accepted.
        prop_assert_eq!(b.stats().opened, 0);
        prop_assert_eq!(b.tracked_senders(), 0);
    }

    #[test]
    fn truncating_fails(msg in proptest::collection::vec(any::<u8>(), 0..100), cut in any::<prop::sample::Index>()) {
        let (mut a, mut b) = pair();
        let s = a.seal(Dest::All, &msg).unwrap();
        let n = cut.index(s.len());
        prop_assert!(b.open(&s[..n]).is_err());
    }
}
