import CohortCore
import Foundation
import GRPCNIOTransportHTTP2
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization
import X509

/// How the endpoint's listener treats connections before gRPC sees them.
public struct ConnectionLimits: Sendable, Hashable {
  /// Connections held at once; more are closed at accept, so a flood of connections cannot
  /// take every file descriptor (`cohort serve` sizes this from `ulimit -n` with
  /// `fitting(descriptorLimit:)`).
  public var maximumConnections: Int
  /// Seconds a new connection has to finish its TLS handshake and send its first HTTP/2 bytes.
  public var handshakeTimeout: Double
  /// Accept TLS 1.3 only (otherwise TLS 1.2 with AEAD suites as well).
  public var tls13Only: Bool
  /// Seconds a connection may carry no stream before it is closed (one that shook hands and
  /// then never spoke HTTP/2, or whose device went away).
  public var idleTimeout: Double
  /// Seconds of silence on a connection with streams before the server pings it; an unanswered
  /// ping (20 s) closes it, so a peer that vanished without a FIN frees its streams.
  public var keepalive: Double
  /// Seconds a participation stream may make no progress where the device has the next move
  /// (its first message, the next chunk of an upload, reading what the server sends, a
  /// secure-aggregation answer); while it trains, until its reporting deadline plus this.
  public var streamInactivity: Double

  public init(
    maximumConnections: Int = 30_000, handshakeTimeout: Double = 10, tls13Only: Bool = false,
    idleTimeout: Double = 120, keepalive: Double = 300, streamInactivity: Double = 60
  ) {
    self.streamInactivity = streamInactivity
    self.idleTimeout = idleTimeout
    self.keepalive = keepalive
    self.maximumConnections = maximumConnections
    self.handshakeTimeout = handshakeTimeout
    self.tls13Only = tls13Only
  }

  /// At most `maximum` connections, leaving 256 descriptors of `descriptorLimit` to the process
  /// (the database, the metrics endpoint, logs).
  public static func fitting(descriptorLimit: Int, maximum: Int = 30_000) -> Int {
    max(16, min(maximum, descriptorLimit - 256))
  }
}

/// TLS 1.2 suites with forward secrecy and authenticated encryption only: no CBC, RSA key
/// exchange, SHA-1 MACs or anything older (TLS 1.3's suites are all of that kind already).
let aeadCipherSuites = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1"

/// The devices' connections, as the listener accepts them: how many are open, and for each
/// mutual-TLS connection the device number its certificate names (keyed by the remote address
/// as gRPC reports it in `ServerContext.remotePeer`), so a message claiming another device can
/// be refused.
final class ConnectionBook: Sendable {
  private struct State {
    var open = 0
    var next: UInt64 = 0
    /// Connections that have not yet sent their first HTTP/2 bytes, oldest first (by serial):
    /// at the limit the oldest is closed to make room, so a flood of silent connections cannot
    /// lock devices out for the length of the handshake deadline.
    var unproven: [UInt64: any Channel] = [:]
    var deviceByPeer: [String: Int] = [:]
    var refusedHandshakes = 0
    var lastWarning: ContinuousClock.Instant?
  }

  private let state = Mutex(State())
  let limit: Int

  init(limit: Int) { self.limit = limit }

  /// Takes a place for a new connection and returns its serial; at the limit the oldest
  /// connection that has not yet spoken HTTP/2 is closed to make room, and when every connection
  /// has, nil (the new one is refused).
  func admit(_ channel: any Channel) -> UInt64? {
    let (serial, evicted) = state.withLock { s -> (UInt64?, (any Channel)?) in
      var evicted: (any Channel)?
      if s.open >= limit {
        guard let oldest = s.unproven.keys.min() else { return (nil, nil) }
        evicted = s.unproven.removeValueReleasingSpace(forKey: oldest)
      }
      s.open += 1
      s.next += 1
      s.unproven[s.next] = channel
      return (s.next, evicted)
    }
    evicted?.close(promise: nil)
    return serial
  }

  /// The connection spoke (its first HTTP/2 bytes arrived): it is no longer evicted for room.
  func proven(_ serial: UInt64) {
    _ = state.withLock { $0.unproven.removeValueReleasingSpace(forKey: serial) }
  }

  func release(_ serial: UInt64, peer: String) {
    state.withLock { s in
      s.open -= 1
      s.unproven.removeValueReleasingSpace(forKey: serial)
      s.deviceByPeer.removeValueReleasingSpace(forKey: peer)
    }
  }

  var open: Int { state.withLock { $0.open } }

  func record(device: Int, peer: String) { state.withLock { $0.deviceByPeer[peer] = device } }

  /// The device number the certificate of the connection from `peer` names, if it presented one.
  func device(peer: String) -> Int? { state.withLock { $0.deviceByPeer[peer] } }

  /// Counts a refused handshake; true when a warning is due (at most one every 10 s, so a flood
  /// of bad handshakes cannot flood the log).
  func refusedHandshake(at now: ContinuousClock.Instant = .now) -> (warn: Bool, count: Int) {
    state.withLock { s in
      s.refusedHandshakes += 1
      if let last = s.lastWarning, now - last < .seconds(10) { return (false, s.refusedHandshakes) }
      s.lastWarning = now
      return (true, s.refusedHandshakes)
    }
  }

  /// The peer string gRPC reports for a connection from `address`.
  static func peer(_ address: NIOCore.SocketAddress?) -> String {
    switch address {
    case .v4(let a)?: "ipv4:\(a.host):\(address?.port ?? 0)"
    case .v6(let a)?: "ipv6:[\(a.host)]:\(address?.port ?? 0)"
    case .unixDomainSocket?: "unix:\(address?.pathname ?? "")"
    case nil: "<unknown>"
    }
  }
}

/// Accepts device connections for the federation endpoint: binds IPv4 or IPv6, closes
/// connections beyond the limit at once, gives each a deadline for its TLS handshake, speaks
/// TLS with AEAD suites only, and records the device each mutual-TLS certificate names.
struct FederationListener: HTTP2ServerTransport.ListenerFactory {
  let eventLoopGroup: any EventLoopGroup
  let host: String
  let port: Int
  let tls: NIOSSLContext?
  let limits: ConnectionLimits
  let book: ConnectionBook
  let logger: Logger

  func makeListeningChannel(
    listenerConfigurator: HTTP2ServerTransport.ListenerConfigurator,
    connectionConfigurator: HTTP2ServerTransport.ConnectionConfigurator
  ) async throws -> NIOAsyncChannel<HTTP2ServerTransport.ConnectionConfigurator.ConnectionChannel, Never> {
    let tls = self.tls
    let book = self.book
    let limits = self.limits
    let logger = self.logger
    return try await ServerBootstrap(group: eventLoopGroup)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .serverChannelOption(.backlog, value: 1024)
      .serverChannelInitializer { listenerConfigurator.configure(channel: $0) }
      .bind(host: host, port: port) { channel in
        let peer = ConnectionBook.peer(channel.remoteAddress)
        guard let serial = book.admit(channel) else {
          // Beyond the limit the connection is closed before it costs more than its accept.
          return channel.close().flatMapThrowing { throw ConnectionRefused() }
        }
        channel.closeFuture.whenComplete { _ in book.release(serial, peer: peer) }
        return channel.eventLoop.makeCompletedFuture {
          if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
          try channel.pipeline.syncOperations.addHandler(
            HandshakeWatch(
              timeout: limits.handshakeTimeout, peer: peer, serial: serial, book: book, logger: logger))
        }.flatMap {
          connectionConfigurator.configure(
            channel: channel, tls: tls == nil ? .none : .configured(requireALPN: false))
        }
      }
  }

  /// A TLS context for the endpoint: the certificate chain and key (checked to belong together),
  /// mutual TLS against `clientCAPEM` when given, TLS 1.3 only or TLS 1.2 with AEAD suites, and
  /// the ALPN names gRPC clients offer.
  static func tlsContext(
    certificateChainPEM: String, privateKeyPEM: String, clientCAPEM: String?, tls13Only: Bool
  ) throws(CohortError) -> NIOSSLContext {
    let chain: [NIOSSLCertificate]
    let key: NIOSSLPrivateKey
    do {
      chain = try NIOSSLCertificate.fromPEMBytes(Array(certificateChainPEM.utf8))
    } catch {
      throw CohortError(
        .invalidConfiguration, "the --tls-cert file holds no readable PEM certificate (\(error))",
        fix: "give the server's certificate (server.pem from `cohort certs create`), not its key")
    }
    guard !chain.isEmpty else {
      throw CohortError(
        .invalidConfiguration, "the --tls-cert file holds no certificate",
        fix: "give the server's certificate (server.pem from `cohort certs create`)")
    }
    do {
      key = try NIOSSLPrivateKey(bytes: Array(privateKeyPEM.utf8), format: .pem)
    } catch {
      throw CohortError(
        .invalidConfiguration, "the --tls-key file holds no readable PEM private key (\(error))",
        fix: "give the server's private key (server-key.pem), not its certificate")
    }
    var configuration = TLSConfiguration.makeServerConfiguration(
      certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
    configuration.minimumTLSVersion = tls13Only ? .tlsv13 : .tlsv12
    configuration.cipherSuites = aeadCipherSuites
    configuration.applicationProtocols = ["grpc-exp", "h2"]
    if let clientCAPEM {
      do {
        let roots = try NIOSSLCertificate.fromPEMBytes(Array(clientCAPEM.utf8))
        guard !roots.isEmpty else { throw CohortError(.invalidConfiguration, "no certificate") }
        configuration.trustRoots = .certificates(roots)
      } catch {
        throw CohortError(
          .invalidConfiguration, "the --client-ca file holds no readable PEM certificate",
          fix: "give the CA that signed the device certificates (ca.pem from `cohort certs create`)")
      }
      configuration.certificateVerification = .noHostnameVerification
    }
    do {
      return try NIOSSLContext(configuration: configuration)
    } catch {
      throw CohortError(
        .invalidConfiguration,
        "the TLS certificate and private key do not work together (\(error)): the key is probably not "
          + "the certificate's",
        fix: "give --tls-cert and --tls-key from the same pair (server.pem and server-key.pem)")
    }
  }
}

/// A connection over the limit, closed at accept.
struct ConnectionRefused: Error {}

/// Closes a connection that has not finished its TLS handshake and sent its first HTTP/2 bytes in
/// time (a silent TCP connection, or TLS without HTTP/2), records the device its certificate
/// names, and logs refused handshakes at a rate-limited warning. After the first bytes, gRPC's
/// idle and keepalive timers take over.
final class HandshakeWatch: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = NIOAny

  let timeout: Double
  let peer: String
  let serial: UInt64
  let book: ConnectionBook
  let logger: Logger
  /// Touched on the connection's event loop only.
  private var deadline: Scheduled<Void>?

  init(timeout: Double, peer: String, serial: UInt64, book: ConnectionBook, logger: Logger) {
    self.serial = serial
    self.timeout = timeout
    self.peer = peer
    self.book = book
    self.logger = logger
  }

  func handlerAdded(context: ChannelHandlerContext) {
    let channel = context.channel
    let scheduled = context.eventLoop.scheduleTask(in: .milliseconds(Int64(timeout * 1000))) {
      channel.close(promise: nil)
    }
    deadline = scheduled
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    deadline?.cancel()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    if deadline != nil {
      deadline?.cancel()
      deadline = nil
      book.proven(serial)
    }
    context.fireChannelRead(data)
  }

  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    if case TLSUserEvent.handshakeCompleted = event {
      // Recorded before the connection's first HTTP/2 frame is read, so every stream on it is
      // held to the certificate's device.
      if let tls = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self),
        let der = try? tls.peerCertificate?.toDERBytes(),
        let certificate = try? Certificate(derEncoded: der),
        let device = DeviceCertificateVerifier.deviceNumber(certificate)
      {
        book.record(device: device, peer: peer)
      }
    }
    context.fireUserInboundEventTriggered(event)
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    if error is NIOSSLError || error is BoringSSLError {
      let (warn, count) = book.refusedHandshake()
      if warn {
        logger.warning(
          "TLS handshake refused",
          metadata: ["peer": "\(peer)", "error": "\(error)", "refused so far": "\(count)"])
      }
    }
    context.fireErrorCaught(error)
  }
}
