import CohortCore
import Testing

@testable import CohortSimulator

@Suite struct CheckInProcessTests {
  /// `n` successive arrivals from time 0.
  func arrivals(_ process: inout CheckInProcess, _ n: Int) -> [(time: Double, device: Int)] {
    var time = 0.0
    var out: [(time: Double, device: Int)] = []
    for _ in 0..<n {
      guard let next = process.next(after: time) else { break }
      out.append(next)
      time = next.time
    }
    return out
  }

  @Test func arrivalsComeAtCountOverInterval() {
    let seed: UInt64 = 21
    var process = CheckInProcess(population: Population(plan: constantPlan(), count: 1000, seed: seed))
    #expect(abs(process.rate - 1000.0 / 600) < 1e-12)
    let list = arrivals(&process, 20_000)
    #expect(list.count == 20_000)
    let mean = list.last!.time / Double(list.count)
    #expect(abs(mean / 0.6 - 1) < 0.03, "mean inter-arrival \(mean), seed \(seed)")
    #expect(zip(list, list.dropFirst()).allSatisfy { $0.time < $1.time })
    #expect(Set(list.map(\.device)).count == 1000, "every device checks in, seed \(seed)")
  }

  @Test func heldDevicesNeverCheckIn() {
    let seed: UInt64 = 22
    var process = CheckInProcess(population: Population(plan: constantPlan(), count: 1000, seed: seed))
    for k in stride(from: 0, to: 1000, by: 2) { process.hold(k, until: .infinity) }
    #expect(process.heldCount == 500)
    let list = arrivals(&process, 10_000)
    #expect(list.allSatisfy { $0.device % 2 == 1 }, "seed \(seed)")
    // Half the devices are eligible, so arrivals come half as often.
    let mean = list.last!.time / Double(list.count)
    #expect(abs(mean / 1.2 - 1) < 0.04, "mean inter-arrival \(mean), seed \(seed)")
  }

  @Test func holdsEndAndReleasesFree() {
    let seed: UInt64 = 23
    var process = CheckInProcess(
      population: Population(plan: constantPlan(checkInInterval: 4), count: 4, seed: seed))
    process.hold(3, until: 100)
    process.hold(2, until: .infinity)
    var time = 0.0
    var seen: [Int: [Double]] = [:]
    while time < 300, let next = process.next(after: time) {
      seen[next.device, default: []].append(next.time)
      time = next.time
      if time > 200 { process.release(2) }
    }
    #expect(seen[3]!.allSatisfy { $0 >= 100 } && !seen[3]!.isEmpty, "seed \(seed)")
    #expect(seen[2]!.allSatisfy { $0 > 200 } && !seen[2]!.isEmpty, "seed \(seed)")
    #expect(process.heldCount == 0)
    #expect(!process.isHeld(3, at: 250) && process.isEligible(device: 3, at: 250))
  }

  @Test func sameSeedSameArrivals() {
    let population = Population(plan: constantPlan(), count: 500, seed: 24)
    var a = CheckInProcess(population: population)
    var b = CheckInProcess(population: population)
    let first = arrivals(&a, 1000)
    let second = arrivals(&b, 1000)
    #expect(first.map(\.time) == second.map(\.time) && first.map(\.device) == second.map(\.device))
    var other = CheckInProcess(population: Population(plan: constantPlan(), count: 500, seed: 25))
    #expect(arrivals(&other, 1000).map(\.device) != first.map(\.device))
  }

  @Test func givesUpWhenEveryoneIsHeldAndResumesAfterARelease() {
    let seed: UInt64 = 26
    var process = CheckInProcess(
      population: Population(plan: constantPlan(checkInInterval: 10), count: 10, seed: seed),
      maximumDraws: 1000)
    for k in 0..<10 { process.hold(k, until: .infinity) }
    #expect(process.next(after: 5) == nil)
    // 1000 draws at rate 1 per second: about 1000 s of virtual time searched.
    #expect(process.searchedUntil > 5 + 800 && process.searchedUntil < 5 + 1200, "seed \(seed)")
    process.release(7)
    let next = process.next(after: process.searchedUntil)
    #expect(next?.device == 7)

    var empty = CheckInProcess(population: Population(plan: constantPlan(), count: 0, seed: seed))
    #expect(empty.next(after: 0) == nil && empty.searchedUntil == .infinity)
  }

  @Test func unavailableDevicesAreThinnedOut() {
    let seed: UInt64 = 27
    let period = 1000.0
    let plan = constantPlan(availability: .diurnal(amplitude: 1, period: period), checkInInterval: 100)
    let population = Population(plan: plan, count: 200, seed: seed, phaseSpread: 0)
    var process = CheckInProcess(population: population)
    let list = arrivals(&process, 20_000)
    #expect(list.allSatisfy { population.isAvailable(device: $0.device, at: $0.time) })
    // The mean chance of availability over whole periods is 1 − a/2 = 0.5.
    let rate = Double(list.count) / list.last!.time
    #expect(abs(rate / (0.5 * process.rate) - 1) < 0.05, "rate \(rate), seed \(seed)")
    // Near every device's trough almost nobody checks in; near its peak almost everybody may.
    let phase = list.map { ($0.time / period).truncatingRemainder(dividingBy: 1) }
    let nearTrough = phase.filter { abs($0 - 0.75) < 0.05 }.count
    let nearPeak = phase.filter { abs($0 - 0.25) < 0.05 }.count
    #expect(nearTrough * 20 < nearPeak, "trough \(nearTrough) peak \(nearPeak), seed \(seed)")
  }

  @Test func aMillionIdleDevicesTakeNoStorage() {
    let seed: UInt64 = 28
    var process = CheckInProcess(population: Population(plan: PopulationPlan(), count: 1_000_000, seed: seed))
    var time = 0.0
    for i in 0..<10_000 {
      guard let next = process.next(after: time) else { break }
      time = next.time
      // Pace steering sends some devices away briefly; their holds must be forgotten.
      if i % 10 == 0 { process.hold(next.device, until: time + 1) }
    }
    _ = process.next(after: time + 2)
    #expect(process.heldCount == 0 && process.holdEntries == 0, "seed \(seed)")
    #expect(MemoryLayout<CheckInProcess>.size < 512)
  }

  @Test func rewrittenHoldsDoNotAccumulate() {
    var process = CheckInProcess(population: Population(plan: constantPlan(), count: 10, seed: 29))
    for i in 0..<10_000 {
      process.hold(i % 3, until: .infinity)
      process.release(i % 3)
      process.hold(5, until: Double(1_000_000 + i))
    }
    #expect(process.heldCount == 1)
    #expect(process.holdEntries <= 2 * process.heldCount + 65)
    #expect(process.isHeld(5, at: 1_009_000) && !process.isHeld(5, at: 1_009_999))
  }
}
