import Synchronization

/// Bounds how long one participation stream may sit without progress: the pump arms it before
/// each wait on the device (its next message, a write it must read) and disarms it while the
/// server's side decides (the protocol machine has its own timers there). When an armed
/// deadline passes, `expired()` returns, and the stream is ended: a device that opens a stream
/// and falls silent, stops reading, or stalls mid-upload holds no memory or cohort place for
/// longer than this.
final class StreamWatchdog: Sendable {
  private struct State {
    var deadline: ContinuousClock.Instant?
    var waiter: CheckedContinuation<Void, Never>?
    var stopped = false
  }

  private let state = Mutex(State())

  /// Progress must come within `seconds` from now.
  func arm(seconds: Double) {
    // The wait may come from a reporting deadline: bounded (a year) and never NaN, so the
    // conversion cannot trap.
    let bounded = seconds.isFinite ? min(max(0, seconds), 365 * 86_400) : 0
    let deadline = ContinuousClock.now.advanced(by: .milliseconds(Int64(bounded * 1000)))
    let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
      s.deadline = deadline
      defer { s.waiter = nil }
      return s.waiter
    }
    waiter?.resume()
  }

  /// No deadline while the server's side has the next move.
  func disarm() { state.withLock { $0.deadline = nil } }

  /// The stream ended: `expired()` returns at once and for good.
  func stop() {
    let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
      s.stopped = true
      defer { s.waiter = nil }
      return s.waiter
    }
    waiter?.resume()
  }

  /// Returns when an armed deadline passes without being re-armed (true), or the watchdog is
  /// stopped or its task cancelled (false). It sleeps until the deadline, never polls.
  func expired() async -> Bool {
    while !Task.isCancelled {
      let (deadline, stopped) = state.withLock { ($0.deadline, $0.stopped) }
      if stopped { return false }
      guard let deadline else {
        // Disarmed: wait until armed again (or stopped).
        await withCheckedContinuation { continuation in
          let resumeNow = state.withLock { s -> Bool in
            if s.stopped || s.deadline != nil { return true }
            s.waiter = continuation
            return false
          }
          if resumeNow { continuation.resume() }
        }
        continue
      }
      if ContinuousClock.now >= deadline {
        // Re-armed meanwhile (a later deadline) goes round again; otherwise it expired.
        if state.withLock({ $0.deadline == deadline }) { return true }
        continue
      }
      try? await Task.sleep(until: deadline, clock: .continuous)
    }
    return false
  }
}
