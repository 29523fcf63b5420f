import CohortCore
import CohortProtocol
import Foundation
import NIOCore
import Synchronization

/// What the server's side tells one device's stream outside a direct reply.
enum SessionEvent: Sendable {
  /// The round's task (from the Coordinator, through the Selector).
  case task(TaskAssignment)
  /// No task will come (a uniform cohort drew others): come back in this window (server time).
  case released(ClosedRange<Double>)
  /// Secure aggregation: the round's parameters and the device's place in it.
  case secAggBegin(SecureAggregationBegin)
  /// Secure aggregation: a server message the device must answer.
  case secAggRequest([UInt8])
  /// Secure aggregation is over for this device; `accepted` says whether its input is in the sum.
  case secAggFinished(accepted: Bool, reason: String)
  /// A wait ran out (the handler's own timer).
  case timeout(UInt64)
  /// The Coordinator's answer to the device's report (under secure aggregation the handler
  /// keeps relaying protocol messages while the report that closes the round is processed).
  case reportAnswered(ServerReply)
}

/// One participation's inbox: the Coordinator's task and the secure-aggregation driver's
/// messages arrive here, and the stream's handler takes them in order.
final class DeviceMailbox: DeviceLink, Sendable {
  let events: AsyncStream<SessionEvent>
  private let continuation: AsyncStream<SessionEvent>.Continuation
  private let deadlines: StreamDeadlines
  private let timers = Mutex<(next: UInt64, scheduled: [UInt64: Scheduled<Void>])>((0, [:]))

  init(deadlines: StreamDeadlines = StreamDeadlines()) {
    self.deadlines = deadlines
    (events, continuation) = AsyncStream.makeStream(of: SessionEvent.self)
  }

  func assign(_ assignment: TaskAssignment, to devices: [DeviceID]) async {
    continuation.yield(.task(assignment))
  }

  func release(_ devices: [DeviceID], window: ClosedRange<Double>) async {
    continuation.yield(.released(window))
  }

  func post(_ event: SessionEvent) {
    continuation.yield(event)
  }

  /// Posts `.timeout(id)` after `seconds` unless cancelled first; returns the id.
  func startTimer(seconds: Double) -> UInt64 {
    timers.withLock { state in
      let id = state.next
      state.next += 1
      let continuation = self.continuation
      state.scheduled[id] = deadlines.schedule(after: seconds) { continuation.yield(.timeout(id)) }
      return id
    }
  }

  func cancelTimer(_ id: UInt64) {
    timers.withLock { $0.scheduled.removeValue(forKey: id)?.cancel() }
  }

  func close() {
    timers.withLock { state in
      for timer in state.scheduled.values { timer.cancel() }
      state.scheduled = [:]
    }
    continuation.finish()
  }
}

/// The mailboxes of open participations, so a shutdown can end every stream that is waiting.
final class OpenParticipations: Sendable {
  private let open = Mutex<(closed: Bool, mailboxes: [ObjectIdentifier: DeviceMailbox])>((false, [:]))

  /// False once the server is shutting down (the mailbox is closed at once).
  func add(_ mailbox: DeviceMailbox) {
    let closed = open.withLock { state in
      if !state.closed { state.mailboxes[ObjectIdentifier(mailbox)] = mailbox }
      return state.closed
    }
    if closed { mailbox.close() }
  }

  func remove(_ mailbox: DeviceMailbox) {
    _ = open.withLock { $0.mailboxes.removeValueReleasingSpace(forKey: ObjectIdentifier(mailbox)) }
  }

  var count: Int { open.withLock { $0.mailboxes.count } }

  func closeAll() {
    let all = open.withLock { state in
      state.closed = true
      defer { state.mailboxes = [:] }
      return Array(state.mailboxes.values)
    }
    for mailbox in all { mailbox.close() }
  }
}
