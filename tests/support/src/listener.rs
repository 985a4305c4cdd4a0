//! A loopback listener that never completes another TCP handshake, for
//! testing connect timeouts without leaving the machine.

use std::net::{SocketAddr, TcpStream};

use socket2::{Domain, Socket, Type};

/// A socket on 127.0.0.1 that listens with a backlog of 0 and never
/// accepts. One connection fills its accept queue, and Linux then drops the
/// SYN of every further connection, so a client's connect hangs until its
/// own timeout.
pub struct FullListener {
    _socket: Socket,
    _filler: TcpStream,
    host: String,
}

impl FullListener {
    pub fn start() -> FullListener {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("create socket");
        let address: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
        socket.bind(&address.into()).expect("bind 127.0.0.1");
        socket.listen(0).expect("listen");
        let bound = socket
            .local_addr()
            .expect("local address")
            .as_socket()
            .expect("an IP socket");
        let filler = TcpStream::connect(bound).expect("fill the accept queue");
        FullListener {
            _socket: socket,
            _filler: filler,
            host: format!("127.0.0.1:{}", bound.port()),
        }
    }

    /// `127.0.0.1:PORT` of the listener.
    pub fn host(&self) -> String {
        self.host.clone()
    }
}
