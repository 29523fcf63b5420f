import CohortCore
public import CohortProtocol
import Foundation

/// The check-ins devices make on their own, in virtual time, without a timer per device.
///
/// Each device checks in on its own about once per `checkInInterval`, so the whole population's
/// spontaneous check-ins form one Poisson process of rate count / checkInInterval. `next(after:)`
/// draws the next arrival time from an exponential and the device uniformly (one process-level
/// stream, purpose `"check-in"`), and keeps the arrival only if that device is eligible then:
/// available (`Population.isAvailable`) and not held. Discarding the rest (thinning) leaves each
/// eligible device checking in at rate 1 / checkInInterval, and an ineligible one not at all.
///
/// A device is *held* while the simulator accounts for it elsewhere: asleep until the time pace
/// steering told it to return (the simulator schedules that return itself), or busy in a round
/// (`hold(_:until: .infinity)`, then `release`). Only held devices take memory, and a hold is
/// forgotten once its time has passed, so an idle population of 10^6 devices costs nothing.
///
/// Virtual time only moves forward: each call's `time` must be at least the previous one's.
public struct CheckInProcess: Sendable {
  public let population: Population
  public let checkInInterval: Double
  /// Arrivals one call may draw and discard before it gives up (see `next(after:)`).
  public let maximumDraws: Int
  /// Where the last call stopped looking: the arrival it returned, or the time it gave up at.
  public private(set) var searchedUntil: Double = 0

  private var rng: RandomStream
  /// Held devices and the time each may check in again on its own.
  private var holds: [DeviceID: Double] = [:]
  /// The same holds ordered by their end, for forgetting them when they pass. Entries superseded
  /// by a later `hold` or a `release` stay until popped or compacted away.
  private var expiries = EventQueue<DeviceID>()
  private var now = -Double.infinity

  /// - Parameters:
  ///   - checkInInterval: the mean seconds between one device's check-ins; by default the
  ///     scenario's `devices.check_in_interval`.
  ///   - maximumDraws: a bound on the work of one `next(after:)` call when almost every device
  ///     is held or unavailable.
  public init(population: Population, checkInInterval: Double? = nil, maximumDraws: Int = 100_000) {
    let interval = checkInInterval ?? population.checkInInterval
    precondition(interval > 0 && interval.isFinite, "the check-in interval must be positive, not \(interval)")
    precondition(maximumDraws > 0, "maximumDraws must be positive")
    self.population = population
    self.checkInInterval = interval
    self.maximumDraws = maximumDraws
    rng = RandomStream(seed: population.seed, purpose: "check-in")
  }

  /// Spontaneous check-ins per second of the whole population, before thinning.
  public var rate: Double { Double(population.count) / checkInInterval }

  /// Devices currently held (including holds that have passed but were not yet forgotten).
  public var heldCount: Int { holds.count }

  /// The first eligible check-in after `time`, or nil when the search gives up.
  ///
  /// The search gives up after `maximumDraws` arrivals in a row that were held or unavailable
  /// (or at once for an empty population), which bounds the work of one call when nearly every
  /// device is held. Virtual time still passed: `searchedUntil` says how far the search got, and
  /// the caller should ask again from there (e.g. schedule a retry event at `searchedUntil`) or
  /// after it next releases a device. Because the arrivals are memoryless, asking again from
  /// `searchedUntil` gives the same process as if the search had gone on.
  ///
  /// An arrival is checked against the holds in force when it is drawn. A hold placed later that
  /// covers it is the caller's to honour: check `isEligible(device:at:)` when the event fires.
  public mutating func next(after time: Double) -> (time: Double, device: DeviceID)? {
    advance(to: time)
    guard population.count > 0 else {
      searchedUntil = .infinity
      return nil
    }
    let rate = self.rate
    var t = time
    for _ in 0..<maximumDraws {
      t += -log(rng.uniformPositive()) / rate
      let device = rng.int(below: population.count)
      if isEligible(device: device, at: t) {
        searchedUntil = t
        return (t, device)
      }
    }
    searchedUntil = t
    return nil
  }

  /// Whether `device` could check in on its own at `time`: not held then, and available.
  public func isEligible(device: DeviceID, at time: Double) -> Bool {
    !isHeld(device, at: time) && population.isAvailable(device: device, at: time)
  }

  /// Whether `device` is held at `time` (a hold lasts while time < its end).
  public func isHeld(_ device: DeviceID, at time: Double) -> Bool {
    guard let until = holds[device] else { return false }
    return time < until
  }

  /// Keeps `device` from checking in on its own before `until` (`.infinity`: until released).
  /// A later hold replaces an earlier one.
  public mutating func hold(_ device: DeviceID, until: Double) {
    precondition(device >= 0 && device < population.count, "device \(device) outside the population")
    precondition(!until.isNaN, "a hold cannot end at NaN")
    guard until > now else {
      holds[device] = nil
      return
    }
    holds[device] = until
    expiries.push(device, at: until)
    compactIfStale()
  }

  /// Lets `device` check in on its own again at once.
  public mutating func release(_ device: DeviceID) {
    holds[device] = nil
    compactIfStale()
  }

  /// Saves what the process needs to continue exactly: its random stream, clock and holds.
  func save(into w: inout SnapshotWriter) {
    w.write(rng)
    w.write(now)
    w.write(searchedUntil)
    let live = holds.sorted { $0.key < $1.key }
    w.write(live.count)
    for (device, until) in live {
      w.write(device)
      w.write(until)
    }
  }

  /// The process as `save` left it. The expiry heap is rebuilt from the holds: which superseded
  /// entries it carried never changes which devices are held.
  init(population: Population, restoring r: inout SnapshotReader) throws(CohortError) {
    self.init(population: population)
    rng = try r.randomStream()
    now = try r.double()
    searchedUntil = try r.double()
    for _ in 0..<(try r.count()) {
      let device = try r.int()
      let until = try r.double()
      holds[device] = until
      expiries.push(device, at: until)
    }
  }

  /// Entries in the expiry heap, superseded ones included (for tests of memory bounds).
  var holdEntries: Int { expiries.count }

  /// Moves the process's clock to `time`, forgetting holds that have ended by then.
  private mutating func advance(to time: Double) {
    precondition(!time.isNaN, "check-in time NaN")
    precondition(time >= now, "virtual time went backwards: \(time) after \(now)")
    now = time
    while let end = expiries.peekTime, end <= time, let expired = expiries.pop() {
      if holds[expired.event] == expired.time { holds[expired.event] = nil }
    }
  }

  /// Rebuilds the expiry heap from the live holds when superseded entries outnumber them, so
  /// memory stays proportional to the devices held however often holds change.
  private mutating func compactIfStale() {
    guard expiries.count > 2 * holds.count + 64 else { return }
    var fresh = EventQueue<DeviceID>()
    // Sorted so the rebuilt heap does not depend on the dictionary's iteration order.
    for (device, until) in holds.sorted(by: { $0.key < $1.key }) { fresh.push(device, at: until) }
    expiries = fresh
  }
}
