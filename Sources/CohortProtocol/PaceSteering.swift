public import CohortCore

/// Pace steering (Bonawitz et al. 2019, §2.3): a stateless rule that tells a device the server
/// does not need now when to come back, so that about as many devices as a round wants return
/// during the next selection window — no thundering herd in large populations, and enough
/// devices at once in small ones.
public struct PaceSteering: Sendable, Hashable {
  /// Devices the next round wants (the selection target).
  public var wanted: Int
  /// Length of a selection window in seconds.
  public var selectionWindow: Double
  /// No window ends later than this many seconds after the check-in it answers, whatever the
  /// rate estimate says (the plan's `server.windows.max_retry`).
  public var maximumRetry: Double

  public init(wanted: Int, selectionWindow: Double, maximumRetry: Double = WindowsPlan.defaultMaximumRetry) {
    precondition(wanted > 0 && selectionWindow > 0, "pace steering needs a positive target and window")
    precondition(maximumRetry > 0, "pace steering needs a positive bound on retry windows")
    self.wanted = wanted
    self.selectionWindow = selectionWindow
    self.maximumRetry = maximumRetry
  }

  /// The window a device should return in, within `now … now + maximumRetry`.
  ///
  /// Returns start when the next selection opens (or now, if it is already open). If devices
  /// check in faster than the round can use them (`checkInRate` per second), the returns are
  /// spread over a span long enough that the arrival rate within any selection window is about
  /// `wanted / selectionWindow`; otherwise they are packed into one window.
  /// - Parameters:
  ///   - now: the current server time.
  ///   - nextSelectionOpens: when the server expects to open the next selection window.
  ///   - checkInRate: the expected rate of check-ins from the whole population, per second.
  public func retryWindow(now: Double, nextSelectionOpens: Double, checkInRate: Double) -> ClosedRange<Double>
  {
    let latest = now + maximumRetry
    let start = min(max(now, nextSelectionOpens), latest)
    let rate = checkInRate.isFinite ? max(0, checkInRate) : 0
    let offered = rate * selectionWindow
    let span = selectionWindow * max(1, offered / Double(wanted))
    return start...min(start + span, latest)
  }
}

/// The population's check-in rate as pace steering needs it: the median of the check-ins counted
/// in each of the last `buckets` whole buckets of `bucketSeconds`, per second.
///
/// A median cannot be fooled by a burst: a fleet reconnecting at once fills one bucket, which
/// moves the median by at most one rank, so honest devices are not sent away for hours. A lasting
/// change of the rate moves it once it has lasted half the buckets. Before a first bucket has
/// ended the estimate is 0 (returns packed into one window), the safe side for a new server.
public struct CheckInRate: Sendable, Hashable {
  public let bucketSeconds: Double
  public let buckets: Int
  /// Counts of the last whole buckets, oldest first (at most `buckets`).
  private(set) var counts: [Int] = []
  /// The bucket being filled (its index since time 0) and its count.
  private(set) var current: Int64?
  private(set) var currentCount = 0

  public init(bucketSeconds: Double, buckets: Int = 9) {
    precondition(bucketSeconds > 0 && bucketSeconds.isFinite && buckets > 0, "a rate needs positive buckets")
    self.bucketSeconds = bucketSeconds
    self.buckets = buckets
  }

  /// Counts one check-in at `now`.
  public mutating func record(now: Double) {
    roll(to: index(now))
    currentCount += 1
  }

  /// Check-ins per second at `now`.
  public func perSecond(now: Double) -> Double {
    var rolled = self
    rolled.roll(to: index(now))
    guard !rolled.counts.isEmpty else { return 0 }
    let sorted = rolled.counts.sorted()
    return Double(sorted[sorted.count / 2]) / bucketSeconds
  }

  private func index(_ now: Double) -> Int64 {
    let i = (now / bucketSeconds).rounded(.down)
    // Times come from the server's own clock; the clamp only keeps a broken clock from trapping.
    return i.isFinite ? Int64(max(-9e15, min(9e15, i))) : 0
  }

  private mutating func roll(to index: Int64) {
    guard let bucket = current else {
      current = index
      return
    }
    guard index > bucket else { return }
    counts.append(currentCount)
    let empty = Int(min(Int64(buckets), index - bucket - 1))
    counts.append(contentsOf: repeatElement(0, count: empty))
    if counts.count > buckets { counts.removeFirst(counts.count - buckets) }
    currentCount = 0
    current = index
  }
}

// MARK: - Saving and restoring

extension CheckInRate {
  func save(into w: inout SnapshotWriter) {
    w.write(counts)
    w.write(current.map { Int($0) })
    w.write(currentCount)
  }

  init(bucketSeconds: Double, restoring r: inout SnapshotReader) throws(CohortError) {
    self.init(bucketSeconds: bucketSeconds)
    counts = try r.ints()
    current = try r.optionalInt().map { Int64($0) }
    currentCount = try r.int()
    guard counts.count <= buckets else { throw SnapshotReader.corrupt("more check-in buckets than kept") }
  }
}
