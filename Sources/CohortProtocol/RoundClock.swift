import Foundation
import Synchronization

/// Where the server's actors read the time, in seconds. The network server reads the wall
/// clock; the simulator and tests set a manual clock to their own (virtual) time.
public protocol RoundClock: Sendable {
  var now: Double { get }
}

/// Seconds since the Unix epoch.
public struct WallClock: RoundClock {
  public init() {}
  public var now: Double { Date().timeIntervalSince1970 }
}

/// A clock that says what it was last set to: virtual time for the simulator, fixed time for tests.
public final class ManualClock: RoundClock {
  private let time: Mutex<Double>

  public init(_ start: Double = 0) { time = Mutex(start) }

  public var now: Double { time.withLock { $0 } }

  /// Moves the clock; it never goes backwards.
  public func set(_ t: Double) {
    time.withLock { $0 = max($0, t) }
  }
}
