public import CohortProtocol
import Synchronization

/// A device's way to several servers of one federation (replicas, or a standby): participations
/// go to one server until a stream to it fails without a word from it (unreachable, refused the
/// connection, died), and then to the next in the list, round robin. The device's runtime backs
/// off after the failure as after any, so a dead server costs one attempt, not a stall.
///
/// A stream that heard from its server and then failed does not move the device: the server
/// answered, and the next attempt finds out whether it is still there. An upload the device
/// could not finish is resent to whichever server it reaches next (docs/PROTOCOL.md §2.7): the
/// server that gave the task takes it while the round (or, in async mode, the device's
/// reporting window) is open; servers that do not share the run refuse it.
public final class FailoverChannel: ParticipationChannel {
  public let servers: [any ParticipationChannel]
  /// The index of the server participations go to now.
  private let current = Mutex(0)

  /// - Parameter servers: at least one; participations start with the first.
  public init(_ servers: [any ParticipationChannel]) {
    precondition(!servers.isEmpty, "a device needs at least one server")
    self.servers = servers
  }

  /// The index of the server the next participation goes to.
  public var currentServer: Int { current.withLock { $0 } }

  public func participate<Result: Sendable>(
    _ body: @escaping @Sendable (ParticipationStream) async throws -> Result
  ) async throws -> Result {
    let index = current.withLock { $0 }
    let heard = Mutex(false)
    let unreached = Mutex(false)
    do {
      let result = try await servers[index].participate { stream in
        let watched = ParticipationStream(
          send: { stream.send($0) },
          next: {
            do {
              let message = try await stream.next()
              if message != nil { heard.withLock { $0 = true } }
              return message
            } catch let error as ParticipationChannelError {
              if case .connection = error, !heard.withLock({ $0 }) { unreached.withLock { $0 = true } }
              throw error
            }
          })
        return try await body(watched)
      }
      // The conversation may have turned the failure into its own result (the stream's error
      // is the device machine's input): the channel still saw it.
      if unreached.withLock({ $0 }) { moveOn(from: index) }
      return result
    } catch let error as ParticipationChannelError {
      if case .connection = error, !heard.withLock({ $0 }) { moveOn(from: index) }
      throw error
    }
  }

  /// The next server, unless another participation has moved on already.
  private func moveOn(from index: Int) {
    current.withLock { if $0 == index { $0 = (index + 1) % servers.count } }
  }
}
