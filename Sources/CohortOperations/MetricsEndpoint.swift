import CohortCore
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
  /// `any MetricsFactory` (or for `MetricsSystem.bootstrap`).
  public var metricsFactory: PrometheusMetricsFactory { PrometheusMetricsFactory(registry: registry) }

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
