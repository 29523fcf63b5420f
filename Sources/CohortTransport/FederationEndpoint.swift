import CohortCompression
public import CohortCore
public import CohortProtocol
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
public import Logging
public import Metrics

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

  public init(
    plan: Plan, host: String = "127.0.0.1", port: Int = 0, security: ServerSecurity,
    limits: TransportLimits? = nil,
    taskWait: Double? = nil, seed: UInt64 = 0
  ) {
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
      planJSON: String(decoding: plan.canonicalJSON, as: UTF8.self))
    service = FederationService(
      handler: handler, secureAggregation: secureAggregation, certificates: certificates,
      participation: participation, limits: limits, clock: clock, metrics: TransportMetrics(factory: metrics),
      logger: logger)
  }

  static func isLoopback(_ host: String) -> Bool {
    host == "localhost" || host == "::1" || host.hasPrefix("127.")
  }

  /// Listens, calls `onListening` with the bound port once devices can connect, and serves
  /// while `work` runs (the server's own loop); when it returns, open streams end and the
  /// listener closes.
  public func serve(
    onListening: @Sendable (Int) -> Void = { _ in }, while work: @escaping @Sendable () async -> Void
  ) async throws {
    let limits = service.limits
    let security: HTTP2ServerTransport.Posix.TransportSecurity
    switch configuration.security {
    case .insecureLoopback:
      security = .plaintext
    case .tls(let chain, let key, let clientCA):
      let chainSource = TLSConfig.CertificateSource.bytes(Array(chain.utf8), format: .pem)
      let keySource = TLSConfig.PrivateKeySource.bytes(Array(key.utf8), format: .pem)
      if let clientCA {
        security = .mTLS(certificateChain: [chainSource], privateKey: keySource) {
          $0.trustRoots = .certificates([.bytes(Array(clientCA.utf8), format: .pem)])
          $0.clientCertificateVerification = .noHostnameVerification
        }
      } else {
        security = .tls(certificateChain: [chainSource], privateKey: keySource)
      }
    }
    let transport = HTTP2ServerTransport.Posix(
      address: .ipv4(
        host: configuration.host == "localhost" ? "127.0.0.1" : configuration.host, port: configuration.port),
      transportSecurity: security,
      config: .defaults {
        $0.rpc.maxRequestPayloadSize = limits.maxMessageBytes
        // Many devices may share one connection (a gateway, `cohort load`); each waiting
        // device holds a stream.
        $0.http2.maxConcurrentStreams = 16_384
      })
    let server = GRPCServer(transport: transport, services: [service])
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { try await server.serve() }
      guard let address = try await transport.listeningAddress.ipv4 else {
        server.beginGracefulShutdown()
        try await group.waitForAll()
        return
      }
      onListening(address.port)
      logger.info(
        "serving",
        metadata: ["address": "\(address.host):\(address.port)", "plan": "\(configuration.plan.name)"])
      await work()
      // Streams still waiting (for a task, or for a protocol step) end now.
      service.open.closeAll()
      server.beginGracefulShutdown()
      try await group.waitForAll()
    }
  }
}
