//! A scheduler and a worker in this process, attacked on the wire: wrong tokens, oversized,
//! truncated and malformed frames each close that one connection, and the cluster goes on
//! computing.

use std::time::Duration;

use partita_core::SyncScheduler;
use partita_distributed::cluster_file::{Link, SERVER_NAME};
use partita_distributed::wire::{Welcome, framed, hello, read_msg, resolve};
use partita_distributed::{
    Client, ClusterFile, SchedulerOptions, SchedulerServer, WorkerOptions, run_worker,
};
use partita_proto::messages::Role;

struct Cluster {
    runtime: tokio::runtime::Runtime,
    credentials: ClusterFile,
    _dir: tempfile::TempDir,
}

fn start() -> Cluster {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.json");
    let options = SchedulerOptions::new("127.0.0.1:0".parse().unwrap(), file.clone());
    let server = runtime.block_on(SchedulerServer::bind(options)).unwrap();
    let credentials = server.cluster().clone();
    runtime.spawn(server.run());
    let worker = WorkerOptions {
        nthreads: 1,
        name: "in-process".into(),
        spill_dir: Some(dir.path().to_path_buf()),
        ..WorkerOptions::default()
    };
    runtime.spawn(run_worker(credentials.clone(), worker));
    Cluster {
        runtime,
        credentials,
        _dir: dir,
    }
}

/// A QUIC connection to the scheduler with the right certificate; the caller decides what
/// to say on its first stream.
async fn raw_stream(
    credentials: &ClusterFile,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(
            credentials.client_config(Link::Loopback).unwrap(),
            resolve(&credentials.address).unwrap(),
            SERVER_NAME,
        )
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    (conn, send, recv)
}

/// Wait for the scheduler to close `conn`.
async fn closed_by_peer(conn: &quinn::Connection) -> bool {
    tokio::time::timeout(Duration::from_secs(15), conn.closed())
        .await
        .is_ok()
}

fn the_cluster_still_computes(cluster: &Cluster) {
    let client = Client::connect_with(cluster.credentials.clone()).unwrap();
    client.wait_for_workers(1, Duration::from_secs(10)).unwrap();
    let x = partita_array::arange(0.0, 100.0, 1.0, partita_array::DType::F64, 10).unwrap();
    let total = x.sum(partita_array::Axes::All).unwrap();
    let on_cluster = total.compute::<f64>(&client).unwrap();
    let here = total.compute::<f64>(&SyncScheduler).unwrap();
    assert_eq!(on_cluster, here);
    assert_eq!(on_cluster.sum(), 4950.0);
}

#[test]
fn oversized_truncated_and_malformed_frames_close_only_their_connection() {
    let cluster = start();
    let creds = cluster.credentials.clone();
    cluster.runtime.block_on(async {
        // A length prefix far over the limit.
        let (conn, mut send, _recv) = raw_stream(&creds).await;
        send.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        assert!(closed_by_peer(&conn).await, "oversized frame tolerated");

        // Valid length, bytes that are not MessagePack of a Hello.
        let (conn, mut send, _recv) = raw_stream(&creds).await;
        let mut bad = 12u32.to_le_bytes().to_vec();
        bad.extend_from_slice(b"\xc1\xc1 not msgpack");
        send.write_all(&bad[..16]).await.unwrap();
        assert!(closed_by_peer(&conn).await, "malformed hello tolerated");

        // A frame cut short, then the stream ends.
        let (conn, mut send, _recv) = raw_stream(&creds).await;
        let mut cut = 100u32.to_le_bytes().to_vec();
        cut.extend_from_slice(&[0x93; 10]);
        send.write_all(&cut).await.unwrap();
        send.finish().unwrap();
        assert!(closed_by_peer(&conn).await, "truncated frame tolerated");

        // A proper client joins, then sends garbage.
        let (conn, mut send, mut recv) = raw_stream(&creds).await;
        let hi = framed(&hello(&creds, Role::Client, "rude client")).unwrap();
        send.write_all(&hi).await.unwrap();
        let welcome: Welcome = read_msg(&mut recv).await.unwrap().unwrap();
        assert!(matches!(welcome, Welcome::Accepted { .. }), "{welcome:?}");
        let mut junk = 8u32.to_le_bytes().to_vec();
        junk.extend_from_slice(&[0xff; 8]);
        send.write_all(&junk).await.unwrap();
        assert!(
            closed_by_peer(&conn).await,
            "garbage after joining tolerated"
        );

        // A wrong token is answered with a refusal naming the problem.
        let (conn, mut send, mut recv) = raw_stream(&creds).await;
        let mut wrong = creds.clone();
        wrong.token = "guess".into();
        let hi = framed(&hello(&wrong, Role::Client, "guesser")).unwrap();
        send.write_all(&hi).await.unwrap();
        match read_msg::<Welcome>(&mut recv).await {
            Ok(Some(Welcome::Refused { reason })) => assert!(reason.contains("token"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(closed_by_peer(&conn).await, "wrong token tolerated");
    });
    the_cluster_still_computes(&cluster);
}

#[test]
fn a_worker_data_server_refuses_strangers() {
    let cluster = start();
    let client = Client::connect_with(cluster.credentials.clone()).unwrap();
    client.wait_for_workers(1, Duration::from_secs(10)).unwrap();
    let (worker, _) = client.workers().unwrap().remove(0);
    let creds = cluster.credentials.clone();
    cluster.runtime.block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = endpoint
            .connect_with(
                creds.client_config(Link::Loopback).unwrap(),
                resolve(&worker.address).unwrap(),
                SERVER_NAME,
            )
            .unwrap()
            .await
            .unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        let mut wrong = creds.clone();
        wrong.token = "guess".into();
        let hi = framed(&hello(&wrong, Role::Client, "stranger")).unwrap();
        send.write_all(&hi).await.unwrap();
        assert!(
            closed_by_peer(&conn).await,
            "the data server served a stranger"
        );
    });
    drop(client);
    the_cluster_still_computes(&cluster);
}

/// A data server that lies: fetching from it gives one error per key, naming the key, and
/// never a panic or an allocation the size it announces.
#[test]
fn lying_data_servers_fail_each_key_with_an_error() {
    use partita_core::Key;
    use partita_distributed::wire::Peers;
    use partita_proto::messages::{DataOpen, DataResponse, Hello};
    use std::sync::Arc;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let creds = ClusterFile::generate("127.0.0.1:0".into()).unwrap();
    runtime.block_on(async {
        let server = quinn::Endpoint::server(
            creds.server_config(Link::Loopback).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let address = format!("127.0.0.1:{}", server.local_addr().unwrap().port());
        tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let _: Hello = read_msg(&mut recv).await.unwrap().unwrap();
                let Some(DataOpen::Fetch(request)) = read_msg(&mut recv).await.unwrap() else {
                    panic!("not a fetch");
                };
                let id = request.request_id;
                let mut out = Vec::new();
                if request.keys.len() == 3 {
                    // Garbage bytes for the first key, "missing" for the second, then
                    // another key than the third.
                    let (a, b) = (request.keys[0].clone(), request.keys[1].clone());
                    let data = DataResponse::Data {
                        request_id: id,
                        key: a,
                        nbytes: 8,
                        body: 0,
                    };
                    out.extend(framed(&data).unwrap());
                    out.extend([0xff; 8]);
                    out.extend(
                        framed(&DataResponse::Missing {
                            request_id: id,
                            key: b,
                        })
                        .unwrap(),
                    );
                    let other = Key::named("not-asked-for");
                    let data = DataResponse::Data {
                        request_id: id,
                        key: other,
                        nbytes: 1,
                        body: 0,
                    };
                    out.extend(framed(&data).unwrap());
                } else if request.keys.len() == 2 {
                    // A body longer than the value it is part of.
                    let data = DataResponse::Data {
                        request_id: id,
                        key: request.keys[0].clone(),
                        nbytes: 4,
                        body: 16,
                    };
                    out.extend(framed(&data).unwrap());
                    out.extend([0; 16]);
                } else {
                    // 512 GiB announced, nothing sent.
                    let key = request.keys[0].clone();
                    let data = DataResponse::Data {
                        request_id: id,
                        key,
                        nbytes: 1 << 39,
                        body: 1 << 39,
                    };
                    out.extend(framed(&data).unwrap());
                }
                send.write_all(&out).await.unwrap();
                let _ = send.finish();
                let _ = send.stopped().await;
            }
        });
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let peers = Peers::new(endpoint, Arc::new(creds.clone()), "asker".into());
        let keys: Vec<Key> = (0..3).map(|i| Key::new("v", [i])).collect();
        let results = peers.fetch_many(&address, &keys).await;
        assert_eq!(results.len(), 3);
        let errors: Vec<String> = results
            .into_iter()
            .map(|r| r.expect_err("every key fails").to_string())
            .collect();
        assert!(errors[1].contains("does not hold"), "{}", errors[1]);
        assert!(errors[2].contains("not-asked-for"), "{}", errors[2]);
        let two: Vec<Key> = (5..7).map(|i| Key::new("v", [i])).collect();
        let results = peers.fetch_many(&address, &two).await;
        for (r, key) in results.into_iter().zip(&two) {
            let text = r.expect_err("a body longer than its value").to_string();
            assert!(text.contains(&key.to_string()), "{text}");
        }
        let huge = peers.fetch(&address, &Key::new("v", [9])).await;
        let text = huge.expect_err("nothing was sent").to_string();
        assert!(text.contains("('v', 9)"), "{text}");
    });
}
