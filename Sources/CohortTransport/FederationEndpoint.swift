import CohortCompression
public import CohortCore
public import CohortProtocol
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
public import Logging
public import Metrics
import NIOCore
import NIOPosix
import NIOSSL

/// How the server secures its port.
public enum ServerSecurity: Sendable {
  /// TLS with this certificate chain and key (PEM); with `clientCAPEM`, mutual TLS: only
  /// devices whose certificate that CA signed may connect.
  case tls(certificateChainPEM: String, privateKeyPEM: String, clientCAPEM: String?)
  /// No TLS. Refused on anything but a loopback address.
  case insecureLoopback
}

/// Settings of the gRPC endpoint devices connect to.
public struct FederationEndpointConfiguration: Sendable {
  public var plan: Plan
  public var host: String
  /// 0 lets the OS choose (read it from `onListening`).
  public var port: Int
  public var security: ServerSecurity
  /// Size limits; nil derives them from the model and the plan's codec.
  public var limits: TransportLimits?
  /// Seconds an admitted device waits for its task before it is told to come back; nil uses
  /// the plan's selection window (at least 5 s).
  public var taskWait: Double?
  /// The run seed the rounds' shared codec seeds come from.
  public var seed: UInt64
  /// How many connections, how long a handshake, which TLS versions.
  public var connections: ConnectionLimits

  public init(
    plan: Plan, host: String = "127.0.0.1", port: Int = 0, security: ServerSecurity,
    limits: TransportLimits? = nil,
    taskWait: Double? = nil, seed: UInt64 = 0, connections: ConnectionLimits = ConnectionLimits()
  ) {
    self.connections = connections
    self.plan = plan
    self.host = host
    self.port = port
    self.security = security
    self.limits = limits
    self.taskWait = taskWait
    self.seed = seed
  }
}

/// The `cohort.v1.Federation` gRPC service on a port, over TLS or mutual TLS, in front of a
/// `FederationHandler`: it maps wire messages to the protocol's and back, enforces size limits
/// and relays secure aggregation; what the server decides lives behind the handler.
public final class FederationEndpoint: Sendable {
  public let configuration: FederationEndpointConfiguration
  let service: FederationService
  let logger: Logger
  /// Open connections and the devices their certificates name.
  let connections: ConnectionBook

  /// - Parameters:
  ///   - modelParameters: values in the model (updates and chunks are limited by it).
  ///   - secureAggregation: the driver relaying secure aggregation over device streams, when
  ///     the plan enables it (the same one the handler's coordinator runs rounds with).
  public init(
    configuration: FederationEndpointConfiguration, handler: any FederationHandler, modelParameters: Int,
    secureAggregation: NetworkSecureAggregation?, clock: any RoundClock = WallClock(), logger: Logger,
    metrics: any MetricsFactory = MetricsSystem.factory
  ) throws(CohortError) {
    let plan = configuration.plan
    if case .insecureLoopback = configuration.security, !Self.isLoopback(configuration.host) {
      throw CohortError(
        .invalidConfiguration, "plaintext is allowed only on a loopback address, not \(configuration.host)",
        fix: "listen on 127.0.0.1 or ::1, or give --tls-cert and --tls-key")
    }
    // The active variant's identity keys come from device certificates (their signing-key
    // extension). Under mutual TLS the server checks them against the client CA; without it the
    // server has no CA and checks only their form, and each device's own check of its peers
    // against its --ca is what stands between a wrong key and its signature.
    var certificates: DeviceCertificateVerifier?
    if plan.secureAggregation.enabled, plan.secureAggregation.variant == .active {
      if case .tls(_, _, let clientCA?) = configuration.security {
        certificates = try DeviceCertificateVerifier(caPEM: clientCA)
      } else {
        certificates = .formOnly
        let warning =
          "active secure aggregation without mutual TLS: device certificates are not checked against a CA here; "
          + "each device checks its peers' against its own --ca and refuses the round on a certificate it cannot verify"
        logger.warning("\(warning)")
      }
    }
    self.configuration = configuration
    self.logger = logger
    let connections = ConnectionBook(limit: configuration.connections.maximumConnections)
    self.connections = connections
    // Updates travel in the plan's encoding unless secure aggregation carries them.
    let codec =
      plan.compression.kind == .none || plan.secureAggregation.enabled
      ? nil : try UpdateCodec(plan: plan.compression, dimension: modelParameters)
    let limits =
      configuration.limits
      ?? TransportLimits(parameters: modelParameters, encodedUpdateBytes: codec?.wireBytes ?? 0)
    let participation = ServerParticipation.Configuration(
      secureAggregation: secureAggregation != nil, requiresCertificate: certificates != nil,
      scaffold: plan.server.strategy.kind == .scaffold,
      adaptiveClipping: plan.privacy.adaptiveClipping != nil,
      codec: codec, runSeed: configuration.seed,
      // The handler's model layout replaces this for each stream.
      layout: WeightsLayout([.init("model", [modelParameters])]), limits: limits.participation,
      taskWait: configuration.taskWait ?? max(5, plan.server.windows.selection),
      selectionWindow: plan.server.windows.selection,
      planJSON: String(decoding: plan.deviceJSON, as: UTF8.self))
    service = FederationService(
      handler: handler, secureAggregation: secureAggregation, certificates: certificates,
      participation: participation, limits: limits, clock: clock, metrics: TransportMetrics(factory: metrics),
      logger: logger, connections: connections, streamInactivity: configuration.connections.streamInactivity)
  }

  /// The innermost cause of a transport error (a bind's "Address already in use").
  static func cause(of error: any Error) -> String {
    var error = error
    while let wrapped = (error as? RPCError)?.cause ?? (error as? RuntimeError)?.cause { error = wrapped }
    if let io = error as? IOError { return io.description }
    return "\(error)"
  }

  static func isLoopback(_ host: String) -> Bool {
    host == "localhost" || host == "::1" || host == "[::1]" || host.hasPrefix("127.")
  }

  /// Listens, calls `onListening` with the bound port once devices can connect, and serves
  /// while `work` runs (the server's own loop); when it returns, open streams end and the
  /// listener closes.
  public func serve(
    onListening: @Sendable (Int) -> Void = { _ in }, while work: @escaping @Sendable () async -> Void
  ) async throws {
    let limits = service.limits
    let tls: NIOSSLContext?
    switch configuration.security {
    case .insecureLoopback:
      tls = nil
    case .tls(let chain, let key, let clientCA):
      tls = try FederationListener.tlsContext(
        certificateChainPEM: chain, privateKeyPEM: key, clientCAPEM: clientCA,
        tls13Only: configuration.connections.tls13Only)
    }
    let host = configuration.host == "localhost" ? "127.0.0.1" : configuration.host
    let listener = FederationListener(
      eventLoopGroup: MultiThreadedEventLoopGroup.singletonMultiThreadedEventLoopGroup, host: host,
      port: configuration.port, tls: tls, limits: configuration.connections, book: connections, logger: logger
    )
    var config = HTTP2ServerTransport.Custom<FederationListener>.Config.defaults
    config.rpc.maxRequestPayloadSize = limits.maxMessageBytes
    // Many devices may share one connection (a gateway, `cohort load`); each waiting device
    // holds a stream.
    config.http2.maxConcurrentStreams = 16_384
    config.connection.maxIdleTime = .milliseconds(Int64(configuration.connections.idleTimeout * 1000))
    config.connection.maxGraceTime = .seconds(10)
    config.connection.keepalive.time = .milliseconds(Int64(configuration.connections.keepalive * 1000))
    config.connection.keepalive.timeout = .seconds(20)
    let transport = HTTP2ServerTransport.Custom(listenerFactory: listener, config: config)
    let server = GRPCServer(transport: transport, services: [service])
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { try await server.serve() }
      guard let address = await transport.listeningAddress,
        let port = address.ipv4?.port ?? address.ipv6?.port
      else {
        // The listener never bound: the cause is what `serve` throws.
        do {
          try await group.waitForAll()
        } catch {
          throw CohortError(
            .io, "cannot listen on \(configuration.host):\(configuration.port): \(Self.cause(of: error))",
            fix: "choose a free port in --listen (or 0 for any), or stop the process that holds it")
        }
        throw CohortError(
          .io, "cannot listen on \(configuration.host):\(configuration.port)",
          fix: "check the address in --listen")
      }
      onListening(port)
      logger.info(
        "serving", metadata: ["address": "\(address)", "plan": "\(configuration.plan.name)"])
      await work()
      // Streams still waiting (for a task, or for a protocol step) end now.
      service.open.closeAll()
      server.beginGracefulShutdown()
      try await group.waitForAll()
    }
  }
}
