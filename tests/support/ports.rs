//! Loopback ports for the servers a test starts (`#[path = "support/ports.rs"] mod ports;`).

/// A loopback port free at the time of the call, for a server that must listen on a port known before
/// it starts (a node's cluster routes, a restarted server its clients connected to before).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
