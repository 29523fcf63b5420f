import CohortCore
import CohortOperations
import CohortTransport
import Foundation
import NIOCore
import NIOPosix
import Testing

@Suite struct MetricsEndpointTests {
  @Test func servesCountersFromTheFactoryAtMetrics() async throws {
    let endpoint = MetricsEndpoint()
    let port = try await endpoint.start(host: "127.0.0.1", port: 0)
    #expect(port > 0)
    let counter = endpoint.metricsFactory.makeCounter(label: "cohort_test_rounds_total", dimensions: [])
    counter.increment(by: 3)

    let response = try await Self.get("/metrics", port: port)
    #expect(response.hasPrefix("HTTP/1.1 200 OK\r\n"))
    #expect(response.lowercased().contains("content-type: text/plain; version=0.0.4"))
    #expect(Self.body(of: response).split(separator: "\n").contains("cohort_test_rounds_total 3"))

    // The query string does not matter; the count is read anew on each scrape.
    counter.increment(by: 1)
    let again = try await Self.get("/metrics?name[]=x", port: port)
    #expect(Self.body(of: again).split(separator: "\n").contains("cohort_test_rounds_total 4"))
    try await endpoint.stop()
  }

  @Test func otherPathsAre404AndOtherMethods405() async throws {
    let endpoint = MetricsEndpoint()
    let port = try await endpoint.start(host: "127.0.0.1", port: 0)
    let missing = try await Self.get("/", port: port)
    #expect(missing.hasPrefix("HTTP/1.1 404 Not Found\r\n"))
    let posted = try await Self.request("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n", port: port)
    #expect(posted.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n"))
    try await endpoint.stop()
  }

  @Test func stopEndsOpenConnectionsAndAllowsARestart() async throws {
    let endpoint = MetricsEndpoint()
    try await endpoint.stop()  // not running: nothing to do
    let port = try await endpoint.start()
    await #expect(throws: CohortError.self) { try await endpoint.start() }

    // A keep-alive connection, left open after its response, is closed by stop().
    let channel = try await Self.connect(port: port)
    try await channel.executeThenClose { inbound, outbound in
      try await outbound.write(ByteBuffer(string: "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n"))
      var iterator = inbound.makeAsyncIterator()
      var received = ""
      while !received.contains("\r\n\r\n") {
        guard let buffer = try await iterator.next() else { break }
        received += String(buffer: buffer)
      }
      #expect(received.hasPrefix("HTTP/1.1 200 OK\r\n"))
      try await endpoint.stop()
      while try await iterator.next() != nil {}  // ends because the server closed the connection
    }

    let restarted = try await endpoint.start()
    #expect(try await Self.get("/metrics", port: restarted).hasPrefix("HTTP/1.1 200 OK\r\n"))
    try await endpoint.stop()
  }

  // MARK: - A plain TCP client

  static func connect(port: Int) async throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
    try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .connect(host: "127.0.0.1", port: port) { channel in
        channel.eventLoop.makeCompletedFuture {
          try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
        }
      }
  }

  static func get(_ path: String, port: Int) async throws -> String {
    try await request("GET \(path) HTTP/1.1\r\n", port: port)
  }

  /// Sends a request line and headers with `Connection: close` and returns everything the server
  /// sends until it closes the connection.
  static func request(_ head: String, port: Int) async throws -> String {
    let channel = try await connect(port: port)
    return try await channel.executeThenClose { inbound, outbound in
      try await outbound.write(ByteBuffer(string: head + "Host: test\r\nConnection: close\r\n\r\n"))
      var response = ""
      for try await buffer in inbound { response += String(buffer: buffer) }
      return response
    }
  }

  static func body(of response: String) -> Substring {
    guard let end = response.range(of: "\r\n\r\n") else { return "" }
    return response[end.upperBound...]
  }
}
