//! The API port's connection limits with the shipped defaults, against the
//! binary: one source cannot hold every slot, and a client that never finishes
//! its headers is closed (before, both held the port for ever: 1,100 slow
//! connections took the API down with "Too many open files").

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// True if the server closes `s` (EOF, reset or an error answer) within `within`
/// while we send a header byte every 200 ms.
async fn closed_while_dribbling(s: &mut TcpStream, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if s.write_all(b"a").await.is_err() {
            return true;
        }
        let mut buf = [0u8; 256];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            match r {
                Ok(0) | Err(_) => return true,
                Ok(_) if buf.starts_with(b"HTTP/1.1 4") => return true,
                Ok(_) => {}
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_hold_the_api_port() {
    let mut cluster = LocalCluster::prepare(exe(), 1, &["127.0.0.1"], "").unwrap();
    cluster.bootstrap().await.unwrap();
    let addr: std::net::SocketAddr = cluster.nodes[0].api_addr.parse().unwrap();
    let per_source = tandem::http::serve::MAX_PER_SOURCE;

    // Slowloris: headers that never end are cut after the header timeout.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nx-a: ")
        .await
        .unwrap();
    let limit = tandem::http::serve::HEADER_TIMEOUT + Duration::from_secs(10);
    assert!(
        closed_while_dribbling(&mut slow, limit).await,
        "a client that never finished its headers kept its connection"
    );

    // One source's connections beyond its cap are closed at once...
    let mut held = Vec::new();
    for _ in 0..per_source {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection {} from one source was kept",
        per_source + 1
    );
    // ...while other clients are served.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    drop(held);
}
