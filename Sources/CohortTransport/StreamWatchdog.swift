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
    // The wait may come from a plan's deadline: bounded (a year) and never NaN, so the
    // conversion cannot trap.
    let bounded = seconds.isFinite ? min(max(0, seconds), 365 * 86_400) : 0
    return group.next().scheduleTask(in: .milliseconds(Int64(bounded * 1000))) { fire() }
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
    /// Which arming a firing timer belongs to: a timer cancelled too late to stop it fires
    /// for an old generation and is ignored.
    var generation: UInt64 = 0
    var timer: Scheduled<Void>?
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
    state.withLock { s in
      guard !s.stopped, !s.fired else { return }
      s.timer?.cancel()
      s.generation &+= 1
      let generation = s.generation
      s.timer = deadlines.schedule(after: seconds) { [weak self] in self?.fire(generation) }
    }
  }

  /// No deadline while the server's side has the next move.
  func disarm() {
    state.withLock { s in
      s.timer?.cancel()
      s.timer = nil
      s.generation &+= 1
    }
  }

  /// The stream ended: `expired()` returns false at once and for good.
  func stop() {
    let waiter = state.withLock { s -> CheckedContinuation<Bool, Never>? in
      s.stopped = true
      s.timer?.cancel()
      s.timer = nil
      defer { s.waiter = nil }
      return s.waiter
    }
    waiter?.resume(returning: false)
  }

  private func fire(_ generation: UInt64) {
    let waiter = state.withLock { s -> CheckedContinuation<Bool, Never>? in
      guard s.generation == generation, s.timer != nil, !s.stopped else { return nil }
      s.fired = true
      s.timer = nil
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
