import CohortProtocol
import Synchronization
import Testing

@testable import CohortDevice

/// A server as a channel: one that cannot be reached, or one that answers once and then fails.
struct FakeServer: ParticipationChannel {
  enum Behaviour: Sendable { case unreachable, answersThenFails, answers }
  let behaviour: Behaviour

  func participate<Result: Sendable>(
    _ body: @escaping @Sendable (ParticipationStream) async throws -> Result
  ) async throws -> Result {
    switch behaviour {
    case .unreachable:
      throw ParticipationChannelError.connection("connection refused")
    case .answersThenFails, .answers:
      let answered = Mutex(false)
      let failsAfter = behaviour == .answersThenFails
      return try await body(
        ParticipationStream(
          send: { _ in },
          next: {
            if answered.withLock({ $0 }) {
              if failsAfter { throw ParticipationChannelError.connection("reset") }
              return nil
            }
            answered.withLock { $0 = true }
            return .retry(earliestSeconds: 1, latestSeconds: 2)
          }))
    }
  }
}

@Suite struct FailoverChannelTests {
  /// Reads the stream to its end, as a conversation does, turning a failure into a result.
  func converse(_ channel: FailoverChannel) async -> String {
    do {
      return try await channel.participate { stream in
        do {
          while try await stream.next() != nil {}
          return "ended"
        } catch {
          return "failed"
        }
      }
    } catch {
      return "unreached"
    }
  }

  @Test func anUnreachableServerSendsTheNextParticipationToTheNext() async {
    let channel = FailoverChannel([
      FakeServer(behaviour: .unreachable), FakeServer(behaviour: .answers), FakeServer(behaviour: .answers),
    ])
    #expect(await converse(channel) == "unreached")
    #expect(channel.currentServer == 1)
    #expect(await converse(channel) == "ended")
    #expect(channel.currentServer == 1)
  }

  /// The conversation may catch the stream's failure itself; the channel moves on all the same
  /// when the server never said a word, and wraps round to the first.
  @Test func aFailureBeforeAnyAnswerMovesOnEvenWhenTheConversationCatchesIt() async {
    let silent = ParticipationChannelError.connection("refused")
    struct SilentServer: ParticipationChannel {
      let error: ParticipationChannelError
      func participate<Result: Sendable>(
        _ body: @escaping @Sendable (ParticipationStream) async throws -> Result
      ) async throws -> Result {
        try await body(ParticipationStream(send: { _ in }, next: { throw error }))
      }
    }
    let channel = FailoverChannel([FakeServer(behaviour: .answers), SilentServer(error: silent)])
    #expect(await converse(channel) == "ended")
    #expect(channel.currentServer == 0)
    let second = FailoverChannel([SilentServer(error: silent), FakeServer(behaviour: .answers)])
    #expect(await converse(second) == "failed")
    #expect(second.currentServer == 1)
    let wraps = FailoverChannel([SilentServer(error: silent), SilentServer(error: silent)])
    _ = await converse(wraps)
    _ = await converse(wraps)
    #expect(wraps.currentServer == 0)
  }

  /// A server that answered and then failed keeps the device: it was there.
  @Test func aServerThatAnsweredKeepsTheDevice() async {
    let channel = FailoverChannel([FakeServer(behaviour: .answersThenFails), FakeServer(behaviour: .answers)])
    #expect(await converse(channel) == "failed")
    #expect(channel.currentServer == 0)
  }
}
