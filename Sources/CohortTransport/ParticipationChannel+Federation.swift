public import CohortProtocol
import GRPCCore
import Synchronization

// The device's participation stream over gRPC: wire messages mapped to protocol messages and
// back, gRPC statuses (and the server's `cohort-reason`) mapped to `ParticipationChannelError`.

extension FederationConnection: ParticipationChannel {
  public func participate<Result: Sendable>(
    _ body: @escaping @Sendable (ParticipationStream) async throws -> Result
  ) async throws -> Result {
    let (outgoing, sink) = AsyncStream.makeStream(of: Cohort_V1_DeviceMessage.self)
    let inbox = Inbox()
    let federation = self.federation
    // Fail fast when the server cannot be reached (or refuses the handshake): the runtime backs
    // off and tries again instead of the call waiting for a connection forever.
    let options = {
      var options = CallOptions.defaults
      options.waitForReady = false
      return options
    }()
    return try await withThrowingTaskGroup(of: Void.self, returning: Result.self) { group in
      group.addTask {
        do {
          try await federation.participate(
            options: options,
            requestProducer: { writer in
              for await message in outgoing { try await writer.write(message) }
            },
            onResponse: { response in await inbox.serve(response.messages.makeAsyncIterator()) })
          inbox.fail(ParticipationChannelError.connection("the stream ended before the server answered"))
        } catch {
          inbox.fail(error)
        }
      }
      // The conversation starts with the stream, not with the server's response headers: its
      // first message (the check-in, or a resent report) is written as soon as the stream opens,
      // so a server that sends its headers only with its first answer (as many gRPC servers do)
      // hears it, and no round trip is spent waiting. Its reads wait for the response.
      defer {
        sink.finish()
        // A call still waiting for the server's first answer has nothing more to do.
        if !inbox.conversationEnded() { group.cancelAll() }
      }
      return try await body(
        ParticipationStream(send: { sink.yield($0.wire) }, next: { try await inbox.next() }))
    }
  }
}

/// The response stream, handed over by the call's response handler (which holds it open until
/// the conversation ends) to the conversation, which reads it. It is read by one task at a time
/// (the participation's pump), which is what makes sharing it sound.
private final class Inbox: @unchecked Sendable {
  typealias Responses = RPCAsyncSequence<Cohort_V1_ServerMessage, any Error>.AsyncIterator

  private struct Handover: @unchecked Sendable {
    var responses: Responses
  }

  /// One handover, or the call's failure before it.
  private let handover: AsyncThrowingStream<Handover, any Error>
  private let handing: AsyncThrowingStream<Handover, any Error>.Continuation
  /// Finished when the conversation ends, which lets the response handler return.
  private let ended: AsyncStream<Never>
  private let ending: AsyncStream<Never>.Continuation
  private let answered = Atomic<Bool>(false)
  /// Touched by the conversation's task only.
  private var handovers: AsyncThrowingStream<Handover, any Error>.AsyncIterator
  private var responses: Responses?

  init() {
    (handover, handing) = AsyncThrowingStream.makeStream(of: Handover.self)
    (ended, ending) = AsyncStream.makeStream(of: Never.self)
    handovers = handover.makeAsyncIterator()
  }

  /// The response handler's part: hands the response over and returns when the conversation ends.
  func serve(_ responses: Responses) async {
    answered.store(true, ordering: .sequentiallyConsistent)
    handing.yield(Handover(responses: responses))
    handing.finish()
    for await _ in ended {}
  }

  /// The call failed before the server answered (no effect after the handover).
  func fail(_ error: any Error) { handing.finish(throwing: error) }

  /// The conversation is over; whether the server's response had come.
  func conversationEnded() -> Bool {
    ending.finish()
    return answered.load(ordering: .sequentiallyConsistent)
  }

  func next() async throws(ParticipationChannelError) -> ServerMessage? {
    if responses == nil {
      do {
        guard let arrived = try await handovers.next() else {
          throw ParticipationChannelError.connection(
            "the participation was cancelled before the server answered")
        }
        responses = arrived.responses
      } catch let error as ParticipationChannelError {
        throw error
      } catch let error as RPCError {
        throw ParticipationChannelError(error)
      } catch {
        throw .connection("\(error)")
      }
    }
    let message: Cohort_V1_ServerMessage?
    do {
      message = try await responses?.next()
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
      self = .connection(TLSDiagnosis.explain(error) ?? "\(error.code): \(error.message)")
    }
  }
}
