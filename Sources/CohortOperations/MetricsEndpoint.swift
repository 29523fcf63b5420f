import CohortCore
public import CoreMetrics
public import NIOCore
import NIOHTTP1
import NIOPosix
public import Prometheus
import Synchronization

/// Serves a Prometheus registry as text at `GET /metrics` over plain HTTP/1.1, for a Prometheus
/// server to scrape. Every other path answers 404.
///
///     let endpoint = MetricsEndpoint()
///     let port = try await endpoint.start(host: "0.0.0.0", port: 9090)
///     let rounds = Counter(label: "cohort_rounds_total", factory: endpoint.metricsFactory)
///     rounds.increment()
///     ...
///     try await endpoint.stop()
public final class MetricsEndpoint: Sendable {
  /// The metrics served.
  public let registry: PrometheusCollectorRegistry

  private struct State {
    var server: (any Channel)?
    /// Open scrape connections, closed by `stop()` so it does not wait for clients to hang up.
    var connections: [ObjectIdentifier: any Channel] = [:]
  }

  private let state = Mutex(State())
  private let group: any EventLoopGroup

  /// Serves `registry` (a new, empty one by default) on `group`'s event loops (NIO's shared
  /// singleton group when nil).
  public init(
    registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), group: (any EventLoopGroup)? = nil
  ) {
    self.registry = registry
    self.group = group ?? MultiThreadedEventLoopGroup.singleton
  }

  /// A swift-metrics factory that records into ``registry``, for components that take
  /// `any MetricsFactory` (or for `MetricsSystem.bootstrap`). Cohort's metrics get their
  /// `# HELP` text from ``MetricHelp``.
  public var metricsFactory: DescribedMetricsFactory { DescribedMetricsFactory(registry: registry) }

  /// Starts listening on `host`:`port` and returns the bound port (port 0 lets the system pick one).
  @discardableResult
  public func start(host: String = "127.0.0.1", port: Int = 0) async throws -> Int {
    guard state.withLock({ $0.server == nil }) else {
      throw CohortError(
        .invalidConfiguration, "the metrics endpoint is already running",
        fix: "call stop() before starting it again")
    }
    let registry = registry
    let channel: any Channel
    do {
      channel = try await ServerBootstrap(group: group)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelInitializer { [self] channel in
          track(channel)
          return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
            try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry))
          }
        }
        .bind(host: host, port: port).get()
    } catch {
      throw CohortError(
        .io, "could not serve metrics on \(host):\(port): \(error)",
        fix: "choose a free port, or port 0 to let the system pick one")
    }
    let raced = state.withLock { state -> Bool in
      guard state.server == nil else { return true }
      state.server = channel
      return false
    }
    if raced {
      try? await channel.close()
      throw CohortError(
        .invalidConfiguration, "the metrics endpoint is already running",
        fix: "call stop() before starting it again")
    }
    guard let bound = channel.localAddress?.port else {
      try? await stop()
      throw CohortError(.io, "the metrics endpoint on \(host):\(port) has no local port")
    }
    return bound
  }

  /// Stops listening and closes open connections. Does nothing if not running.
  public func stop() async throws {
    guard let server = state.withLock({ $0.server }) else { return }
    // The listening socket first, so no new connection arrives while the others close.
    try? await server.close()
    let connections = state.withLock { state in
      state.server = nil
      defer { state.connections = [:] }
      return Array(state.connections.values)
    }
    for connection in connections { try? await connection.close() }
  }

  private func track(_ channel: any Channel) {
    let id = ObjectIdentifier(channel)
    state.withLock { $0.connections[id] = channel }
    channel.closeFuture.whenComplete { [self] _ in
      _ = state.withLock { $0.connections.removeValue(forKey: id) }
    }
  }
}

/// Answers each request on one connection: the registry's text for `GET /metrics` (and `HEAD`),
/// 405 for other methods there, 404 elsewhere.
private final class MetricsHTTPHandler: ChannelInboundHandler {
  typealias InboundIn = HTTPServerRequestPart
  typealias OutboundOut = HTTPServerResponsePart

  private let registry: PrometheusCollectorRegistry
  private var request: HTTPRequestHead?

  init(registry: PrometheusCollectorRegistry) { self.registry = registry }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .head(let head): request = head
    case .body: break
    case .end:
      guard let head = request else { return }
      request = nil
      respond(to: head, context: context)
    }
  }

  private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
    let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
    var headers = HTTPHeaders()
    let status: HTTPResponseStatus
    var body: [UInt8]
    if path == "/metrics" && (head.method == .GET || head.method == .HEAD) {
      status = .ok
      headers.add(name: "Content-Type", value: "text/plain; version=0.0.4; charset=utf-8")
      body = registry.emitToBuffer()
    } else if path == "/metrics" {
      status = .methodNotAllowed
      headers.add(name: "Allow", value: "GET, HEAD")
      headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
      body = Array("\(head.method) is not allowed; use GET /metrics\n".utf8)
    } else {
      status = .notFound
      headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
      body = Array("not found; metrics are at /metrics\n".utf8)
    }
    headers.add(name: "Content-Length", value: String(body.count))
    if head.method == .HEAD { body = [] }
    let keepAlive = head.isKeepAlive
    if !keepAlive { headers.add(name: "Connection", value: "close") }

    let response = HTTPResponseHead(version: head.version, status: status, headers: headers)
    context.write(wrapOutboundOut(.head(response)), promise: nil)
    if !body.isEmpty {
      var buffer = context.channel.allocator.buffer(capacity: body.count)
      buffer.writeBytes(body)
      context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
    }
    let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
    if !keepAlive {
      let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
      written.whenComplete { _ in bound.value.close(promise: nil) }
    }
  }
}

/// What each of Cohort's metrics counts: the `# HELP` line Prometheus shows beside it.
public enum MetricHelp {
  public static let text: [String: String] = [
    "cohort_check_ins_total": "Device check-ins received by the coordinator.",
    "cohort_reports_accepted_total": "Device reports accepted into a round's aggregate.",
    "cohort_reports_rejected_total": "Device reports or streams rejected, by reason.",
    "cohort_rounds_committed_total": "Rounds committed: their model became the global model and was stored.",
    "cohort_rounds_abandoned_total": "Rounds abandoned (too few devices selected or reporting in time).",
    "cohort_commit_failures_total": "Attempts to write a closed round to the results store that failed.",
    "cohort_round_duration_seconds": "Seconds from a round's configuration to its commit.",
    "cohort_last_committed_round": "The number of the last committed round.",
    "cohort_last_committed_accuracy":
      "Central test accuracy of the last evaluated committed model (serve --test-data).",
    "cohort_last_committed_loss":
      "Central test loss of the last evaluated committed model (serve --test-data).",
    "cohort_privacy_epsilon": "Differential privacy: cumulative epsilon after the last committed round.",
    "cohort_devices_connected": "Device streams open now.",
    "cohort_participations_total": "Device streams (participations) opened.",
    "cohort_bytes_received_total": "Payload bytes received from devices.",
    "cohort_bytes_sent_total": "Payload bytes sent to devices.",
    "cohort_streams_inactive_total": "Device streams closed for inactivity (a stalled or vanished device).",
    "cohort_replica_leader":
      "Replicas: 1 while this replica holds the run's lease and leads its rounds, else 0.",
    "cohort_replicas_live": "Replicas: the replicas of the run this one saw alive at its last heartbeat.",
    "cohort_replica_places_claimed_total": "Replicas: places this replica claimed in rounds' shared cohorts.",
    "cohort_replica_contributions_total": "Replicas: partial aggregates this replica stored for the leader.",
    "cohort_replica_rounds_led_total": "Replicas: rounds this replica led and committed.",
    "cohort_devices_training":
      "server.mode async: devices admitted and training now (at most the concurrency).",
    "cohort_update_staleness":
      "server.mode async: versions applied between a folded update's download and its fold.",
  ]

  /// Buckets of `cohort_round_duration_seconds`: rounds last seconds to an hour, not milliseconds.
  public static let roundDurationBuckets: [Duration] = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600].map {
    .seconds($0)
  }
}

/// A Prometheus metrics factory that gives Cohort's metrics their `# HELP` text (``MetricHelp``)
/// and otherwise records as `PrometheusMetricsFactory` does.
public struct DescribedMetricsFactory: MetricsFactory {
  public let registry: PrometheusCollectorRegistry
  private let plain: PrometheusMetricsFactory

  public init(registry: PrometheusCollectorRegistry) {
    self.registry = registry
    var plain = PrometheusMetricsFactory(registry: registry)
    plain.durationHistogramBuckets["cohort_round_duration_seconds"] = MetricHelp.roundDurationBuckets
    self.plain = plain
  }

  public func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
    guard let help = MetricHelp.text[label] else {
      return plain.makeCounter(label: label, dimensions: dimensions)
    }
    return registry.makeCounter(descriptor: Self.descriptor(label, help), labels: dimensions)
  }

  public func makeFloatingPointCounter(label: String, dimensions: [(String, String)])
    -> any FloatingPointCounterHandler
  {
    guard let help = MetricHelp.text[label] else {
      return plain.makeFloatingPointCounter(label: label, dimensions: dimensions)
    }
    return registry.makeCounter(descriptor: Self.descriptor(label, help), labels: dimensions)
  }

  public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool)
    -> any RecorderHandler
  {
    guard !aggregate, let help = MetricHelp.text[label] else {
      return plain.makeRecorder(label: label, dimensions: dimensions, aggregate: aggregate)
    }
    return registry.makeGauge(descriptor: Self.descriptor(label, help), labels: dimensions)
  }

  public func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
    guard let help = MetricHelp.text[label] else {
      return plain.makeMeter(label: label, dimensions: dimensions)
    }
    return registry.makeGauge(descriptor: Self.descriptor(label, help), labels: dimensions)
  }

  public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
    guard let help = MetricHelp.text[label] else {
      return plain.makeTimer(label: label, dimensions: dimensions)
    }
    let buckets = plain.durationHistogramBuckets[label] ?? plain.defaultDurationHistogramBuckets
    return registry.makeDurationHistogram(
      descriptor: Self.descriptor(label, help), labels: dimensions, buckets: buckets)
  }

  /// The metric named `label` exactly (no unit suffix added), with its help text.
  private static func descriptor(_ label: String, _ help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(metricName: label, unitName: "", helpText: help)
  }

  public func destroyCounter(_ handler: any CounterHandler) { plain.destroyCounter(handler) }
  public func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
    plain.destroyFloatingPointCounter(handler)
  }
  public func destroyRecorder(_ handler: any RecorderHandler) { plain.destroyRecorder(handler) }
  public func destroyMeter(_ handler: any MeterHandler) { plain.destroyMeter(handler) }
  public func destroyTimer(_ handler: any TimerHandler) { plain.destroyTimer(handler) }
}
