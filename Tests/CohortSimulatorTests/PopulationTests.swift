import CohortCore
import Foundation
import Testing

@testable import CohortSimulator

@Suite struct PopulationTests {
  @Test func profilesAreDeterministicAndDifferByDevice() {
    let seed: UInt64 = 7
    let a = Population(plan: PopulationPlan(), count: 100, seed: seed)
    let b = Population(plan: PopulationPlan(), count: 100, seed: seed)
    #expect(a.profile(device: 3) == b.profile(device: 3), "seed \(seed)")
    #expect(a.profile(device: 3) == a.profile(device: 3))
    #expect(a.profile(device: 3) != a.profile(device: 4))
    #expect(
      a.profile(device: 3) != Population(plan: PopulationPlan(), count: 100, seed: 8).profile(device: 3))
  }

  @Test func profilesFollowTheirDistributions() {
    let seed: UInt64 = 11
    var plan = PopulationPlan()
    plan.compute = .lognormal(median: 100, sigma: 0.5)
    plan.download = .uniform(low: 10, high: 20)
    plan.upload = .constant(3)
    plan.dropout = 0.1
    let population = Population(plan: plan, count: 20_000, seed: seed)
    let profiles = (0..<population.count).map { population.profile(device: $0) }
    let speeds = profiles.map(\.examplesPerSecond).sorted()
    let median = speeds[speeds.count / 2]
    #expect(abs(median / 100 - 1) < 0.03, "median speed \(median), seed \(seed)")
    let logs = speeds.map { log($0) }
    let mean = logs.reduce(0, +) / Double(logs.count)
    let sd = (logs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(logs.count)).squareRoot()
    #expect(abs(sd - 0.5) < 0.02, "sigma of log speed \(sd), seed \(seed)")
    #expect(profiles.allSatisfy { (10..<20).contains($0.downloadBytesPerSecond) })
    let meanDownload = profiles.map(\.downloadBytesPerSecond).reduce(0, +) / Double(profiles.count)
    #expect(abs(meanDownload - 15) < 0.1, "mean download \(meanDownload), seed \(seed)")
    #expect(profiles.allSatisfy { $0.uploadBytesPerSecond == 3 && $0.dropout == 0.1 })
  }

  @Test func sampleUsesTheStreamOnlyWhenItMustAndHasTheDocumentedMedian() {
    var rng = RandomStream(seed: 1)
    var before = rng
    #expect(ProfileDistribution.constant(4).sample(&rng) == 4)
    #expect(rng.next() == before.next())  // copies of the same state: constant drew nothing
    #expect(ProfileDistribution.lognormal(median: 8, sigma: 0).sample(&rng) == 8)
    #expect(ProfileDistribution.uniform(low: 2, high: 2).sample(&rng) == 2)
    #expect(ProfileDistribution.uniform(low: 2, high: 4).median == 3)
  }

  @Test func roundTimingIsBytesOverBandwidthAndExamplesOverSpeed() {
    let population = Population(plan: constantPlan(), count: 3, seed: 1)
    let timing = population.roundTiming(
      device: 2, examples: 100, epochs: 2, downloadBytes: 2_000_000, uploadBytes: 500_000)
    #expect(timing == RoundTiming(download: 2, train: 4, upload: 2))
    #expect(timing.total == 8)
  }

  @Test func dropoutHasThePlansChanceAndIsDeterministic() {
    let seed: UInt64 = 5
    let population = Population(plan: constantPlan(dropout: 0.05), count: 40_000, seed: seed)
    var drops = 0
    var points: [Double] = []
    for k in 0..<population.count {
      if let point = population.dropoutPoint(device: k, round: 3) {
        drops += 1
        points.append(point)
        #expect(population.dropsOut(device: k, round: 3))
      }
    }
    let rate = Double(drops) / Double(population.count)
    #expect(abs(rate - 0.05) < 0.005, "dropout rate \(rate), seed \(seed)")
    #expect(points.allSatisfy { (0..<1).contains($0) })
    let meanPoint = points.reduce(0, +) / Double(points.count)
    #expect(abs(meanPoint - 0.5) < 0.03, "mean dropout point \(meanPoint), seed \(seed)")
    // Another round is another draw; the same round is the same one.
    let round4 = (0..<1000).filter { population.dropsOut(device: $0, round: 4) }
    let round3 = (0..<1000).filter { population.dropsOut(device: $0, round: 3) }
    #expect(round3 != round4)
    #expect(round3 == (0..<1000).filter { population.dropsOut(device: $0, round: 3) })
    let never = Population(plan: constantPlan(dropout: 0), count: 1000, seed: seed)
    #expect((0..<1000).allSatisfy { !never.dropsOut(device: $0, round: 1) })
  }

  @Test func alwaysAvailableMeansAlways() {
    let population = Population(plan: constantPlan(), count: 10, seed: 1)
    #expect((0..<10).allSatisfy { population.isAvailable(device: $0, at: 12_345) })
    #expect(population.availabilityProbability(device: 4, at: 99) == 1)
    #expect(population.availabilityPhase(device: 4) == 0)
  }

  @Test func diurnalAvailabilityFollowsTheCurve() {
    let seed: UInt64 = 13
    let period = 86_400.0
    let amplitude = 0.8
    let plan = constantPlan(availability: .diurnal(amplitude: amplitude, period: period))
    let inStep = Population(plan: plan, count: 20_000, seed: seed, phaseSpread: 0)
    for hour in [0.0, 3, 6, 9, 12, 18, 21] {
      let t = hour * 3600 + 5 * period
      let p = 1 - amplitude / 2 + amplitude / 2 * sin(2 * Double.pi * t / period)
      #expect(abs(inStep.availabilityProbability(device: 17, at: t) - p) < 1e-12)
      let available = (0..<inStep.count).filter { inStep.isAvailable(device: $0, at: t) }.count
      let share = Double(available) / Double(inStep.count)
      #expect(abs(share - p) < 0.015, "hour \(hour): share \(share), p \(p), seed \(seed)")
    }
    // Spread over a quarter period, the population's swing shrinks by sinc(π/4).
    let spread = Population(plan: plan, count: 20_000, seed: seed)
    let peak = period / 4
    let expected = 1 - amplitude / 2 + amplitude / 2 * sin(Double.pi / 4) / (Double.pi / 4)
    let share = Double((0..<spread.count).filter { spread.isAvailable(device: $0, at: peak) }.count) / 20_000
    #expect(abs(share - expected) < 0.015, "share at peak \(share), expected \(expected), seed \(seed)")
    #expect((0..<spread.count).allSatisfy { abs(spread.availabilityPhase(device: $0)) <= Double.pi / 4 })
  }

  @Test func aDeviceIsAvailableForOneStretchPerCycle() {
    let seed: UInt64 = 17
    let period = 3600.0
    let population = Population(
      plan: constantPlan(availability: .diurnal(amplitude: 1, period: period)), count: 300, seed: seed)
    var partlyAvailable = 0
    for k in 0..<population.count {
      let phase = population.availabilityPhase(device: k)
      for cycle in [-1, 0, 7] {
        // 120 times strictly inside one trough-to-trough cycle of this device.
        let pattern = (0..<120).map { j -> Bool in
          let theta = 2 * Double.pi * (Double(cycle) + (Double(j) + 0.5) / 120) - Double.pi / 2
          return population.isAvailable(device: k, at: (theta - phase) * period / (2 * Double.pi))
        }
        let on = pattern.firstIndex(of: true)
        let off = pattern.lastIndex(of: true)
        if let on, let off {
          #expect(pattern[on...off].allSatisfy { $0 }, "device \(k) cycle \(cycle), seed \(seed)")
          if on > 0 { partlyAvailable += 1 }
        }
      }
    }
    #expect(partlyAvailable > 500)  // most cycles have a real on-stretch, not all-or-nothing
  }

  @Test func scenarioGivesTheSizeOrAsksForIt() throws {
    let synthetic = try makeScenario(
      "data: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 40}\n"
        + "devices: {dropout: 0.2, check_in_interval: 5m}\nseed: 3\n")
    let population = try Population(scenario: synthetic)
    #expect(population.count == 40 && population.seed == 3 && population.checkInInterval == 300)
    #expect(population.profile(device: 0).dropout == 0.2)

    let csv = try makeScenario("data: {kind: csv, path: d.csv, client_column: user}\n")
    #expect(throws: CohortError.self) { try Population(scenario: csv) }
    #expect(try Population(scenario: csv, count: 12).count == 12)
    let fixed = try makeScenario(
      "data: {kind: csv, path: d.csv}\npartition: {kind: iid}\ndevices: {count: 8}\n")
    #expect(throws: CohortError.self) { try Population(scenario: fixed, count: 9) }
  }

  @Test func aMillionDevicesCostNothingUntilUsed() {
    let population = Population(plan: PopulationPlan(), count: 1_000_000, seed: 1)
    #expect(MemoryLayout<Population>.size < 256)
    let last = population.profile(device: 999_999)
    #expect(last.examplesPerSecond > 0 && last == population.profile(device: 999_999))
  }
}
