public import CohortProtocol
import GRPCCore

// The device's participation stream over gRPC: wire messages mapped to protocol messages and
// back, gRPC statuses (and the server's `cohort-reason`) mapped to `ParticipationChannelError`.

extension FederationConnection: ParticipationChannel {
  public func participate<Result: Sendable>(
    _ body: @escaping @Sendable (ParticipationStream) async throws -> Result
  ) async throws -> Result {
    let (outgoing, sink) = AsyncStream.makeStream(of: Cohort_V1_DeviceMessage.self)
    // Fail fast when the server cannot be reached (or refuses the handshake): the runtime backs
    // off and tries again instead of the call waiting for a connection forever.
    var options = CallOptions.defaults
    options.waitForReady = false
    do {
      return try await federation.participate(
        options: options,
        requestProducer: { writer in
          for await message in outgoing { try await writer.write(message) }
        },
        onResponse: { response in
          defer { sink.finish() }
          let inbox = Inbox(response.messages.makeAsyncIterator())
          do {
            return try await body(
              ParticipationStream(send: { sink.yield($0.wire) }, next: { try await inbox.next() }))
          } catch {
            // Told apart from the call's own errors below, and passed through unchanged.
            throw BodyError(error: error)
          }
        })
    } catch let error as BodyError {
      throw error.error
    } catch let error as RPCError {
      throw ParticipationChannelError(error)
    } catch let error as ParticipationChannelError {
      throw error
    } catch {
      throw ParticipationChannelError.connection("\(error)")
    }
  }
}

private struct BodyError: Error {
  var error: any Error
}

/// The response stream's iterator, read by one task at a time (the participation's pump), which
/// is what makes sharing it sound.
private final class Inbox: @unchecked Sendable {
  private var iterator: RPCAsyncSequence<Cohort_V1_ServerMessage, any Error>.AsyncIterator

  init(_ iterator: RPCAsyncSequence<Cohort_V1_ServerMessage, any Error>.AsyncIterator) {
    self.iterator = iterator
  }

  func next() async throws(ParticipationChannelError) -> ServerMessage? {
    let message: Cohort_V1_ServerMessage?
    do {
      message = try await iterator.next()
    } catch let error as RPCError {
      throw ParticipationChannelError(error)
    } catch {
      throw .connection("\(error)")
    }
    guard let message else { return nil }
    guard message.protocolVersion == UInt32(protocolVersion) else {
      throw .unreadable(
        reason: "protocol_version",
        detail:
          "the server speaks protocol version \(message.protocolVersion), this device \(protocolVersion)")
    }
    guard let mapped = ServerMessage(wire: message) else {
      throw .unreadable(reason: "malformed", detail: "the server sent a message with no content")
    }
    return mapped
  }
}

extension ParticipationChannelError {
  /// A gRPC status as the device sees it: the server's refusal when it names a reason, else a
  /// failed connection.
  init(_ error: RPCError) {
    if let refusal = ParticipationRefusal(error) {
      self = .refused(reason: refusal.reason, detail: refusal.detail)
    } else {
      self = .connection("\(error.code): \(error.message)")
    }
  }
}
