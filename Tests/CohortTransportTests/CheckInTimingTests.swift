import CohortProtocol
import GRPCCore
import GRPCNIOTransportHTTP2
import Testing

@testable import CohortTransport

/// The device's first message goes out as soon as its stream opens, before the server's response
/// headers: a server that sends its headers only with its first answer (as many gRPC servers in
/// other languages do) must still hear the check-in, or both sides would wait for ever.
@Suite(.timeLimit(.minutes(1))) struct CheckInTimingTests {
  @Test func theCheckInGoesOutBeforeTheServersHeaders() async throws {
    let transport = HTTP2ServerTransport.Posix(
      address: .ipv4(host: "127.0.0.1", port: 0), transportSecurity: .plaintext)
    let server = GRPCServer(
      transport: transport, services: [SilentFederation()], interceptors: [HeadersAfterFirstMessage()])
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { try await server.serve() }
      let port = try #require(try await transport.listeningAddress.ipv4?.port)
      let connection = try FederationConnection(host: "127.0.0.1", port: port, security: .insecure)
      defer { connection.close() }
      let answer = try await connection.participate { stream in
        stream.send(.checkIn(CheckInRequest(device: 7, population: "p")))
        return try await stream.next()
      }
      #expect(answer == .retry(earliestSeconds: 1, latestSeconds: 2))
      server.beginGracefulShutdown()
      try await group.waitForAll()
    }
  }
}

/// Holds the response (its headers included) until the device's first message has arrived, then
/// answers a check-in with a retry itself.
private struct HeadersAfterFirstMessage: ServerInterceptor {
  func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>, context: ServerContext,
    next:
      @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    var messages = request.messages.makeAsyncIterator()
    guard let first = try await messages.next() as? Cohort_V1_DeviceMessage, case .checkIn = first.kind,
      let retry = Cohort_V1_ServerMessage.with({
        $0.protocolVersion = UInt32(protocolVersion)
        $0.retry = .with {
          $0.earliestSeconds = 1
          $0.latestSeconds = 2
        }
      }) as? Output
    else { return StreamingServerResponse(error: RPCError(code: .invalidArgument, message: "no check-in")) }
    return StreamingServerResponse { writer in
      try await writer.write(retry)
      return [:]
    }
  }
}

/// The service behind the interceptor, never reached.
private struct SilentFederation: Cohort_V1_Federation.SimpleServiceProtocol {
  func participate(
    request: RPCAsyncSequence<Cohort_V1_DeviceMessage, any Error>,
    response: RPCWriter<Cohort_V1_ServerMessage>, context: ServerContext
  ) async throws {
    throw RPCError(code: .internalError, message: "the interceptor answers")
  }
}
