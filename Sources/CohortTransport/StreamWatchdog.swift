import NIOCore
import NIOPosix
import Synchronization

/// Deadlines of the participation streams, kept on the server's event loops. A cancelled one is
/// freed at once: a cancelled `Task.sleep` keeps its timer (about half a kilobyte) until its
/// deadline passes, so the task-wait timers of a day-long selection window kept the memory of a
/// finished load for a day.
struct StreamDeadlines: Sendable {
  let group: any EventLoopGroup

  init(group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
    self.group = group
  }

  /// Calls `fire` after `seconds` unless the returned handle is cancelled first.
  func schedule(after seconds: Double, _ fire: @escaping @Sendable () -> Void) -> Scheduled<Void> {
    schedule(at: Self.deadline(after: seconds), fire)
  }

  func schedule(at deadline: NIODeadline, _ fire: @escaping @Sendable () -> Void) -> Scheduled<Void> {
    group.next().scheduleTask(deadline: deadline) { fire() }
  }

  /// `seconds` from now. The wait may come from a plan's deadline: bounded (a year) and never
  /// NaN, so the conversion cannot trap.
  static func deadline(after seconds: Double) -> NIODeadline {
    let bounded = seconds.isFinite ? min(max(0, seconds), 365 * 86_400) : 0
    return .now() + .milliseconds(Int64(bounded * 1000))
  }
}

/// Bounds how long one participation stream may sit without progress: the pump arms it before
/// each wait on the device (its next message, a write it must read) and disarms it while the
/// server's side decides (the protocol machine has its own timers there). When an armed
/// deadline passes, `expired()` returns, and the stream is ended: a device that opens a stream
/// and falls silent, stops reading, or stalls mid-upload holds no memory or cohort place for
/// longer than this.
final class StreamWatchdog: Sendable {
  private struct State {
    /// When progress is due; nil while disarmed.
    var deadline: NIODeadline?
    /// One timer per stream, moved only when a deadline comes earlier than it: a stream arms
    /// the watchdog around every message, and rescheduling each time would wake an event loop
    /// per message. When it fires before the deadline, it is set again for the rest.
    var timer: (at: NIODeadline, handle: Scheduled<Void>)?
    var fired = false
    var stopped = false
    var waiter: CheckedContinuation<Bool, Never>?
  }

  private let state = Mutex(State())
  private let deadlines: StreamDeadlines

  init(deadlines: StreamDeadlines = StreamDeadlines()) {
    self.deadlines = deadlines
  }

  /// Progress must come within `seconds` from now.
  func arm(seconds: Double) {
    let deadline = StreamDeadlines.deadline(after: seconds)
    state.withLock { s in
      guard !s.stopped, !s.fired else { return }
      s.deadline = deadline
      if let timer = s.timer, timer.at <= deadline { return }
      s.timer?.handle.cancel()
      s.timer = (deadline, deadlines.schedule(at: deadline) { [weak self] in self?.due() })
    }
  }

  /// No deadline while the server's side has the next move (the timer, if any, finds none).
  func disarm() { state.withLock { $0.deadline = nil } }

  /// The stream ended: `expired()` returns false at once and for good.
  func stop() {
    let waiter = state.withLock { s -> CheckedContinuation<Bool, Never>? in
      s.stopped = true
      s.timer?.handle.cancel()
      s.timer = nil
      defer { s.waiter = nil }
      return s.waiter
    }
    waiter?.resume(returning: false)
  }

  private func due() {
    let waiter = state.withLock { s -> CheckedContinuation<Bool, Never>? in
      s.timer = nil
      guard !s.stopped, let deadline = s.deadline else { return nil }
      if NIODeadline.now() < deadline {
        s.timer = (deadline, deadlines.schedule(at: deadline) { [weak self] in self?.due() })
        return nil
      }
      s.fired = true
      defer { s.waiter = nil }
      return s.waiter
    }
    waiter?.resume(returning: true)
  }

  /// Returns when an armed deadline passes without being re-armed or disarmed (true), or when
  /// the watchdog is stopped or its task cancelled (false).
  func expired() async -> Bool {
    await withTaskCancellationHandler {
      await withCheckedContinuation { continuation in
        let now = state.withLock { s -> Bool? in
          if s.fired { return true }
          if s.stopped { return false }
          s.waiter = continuation
          return nil
        }
        if let now { continuation.resume(returning: now) }
      }
    } onCancel: {
      stop()
    }
  }
}
