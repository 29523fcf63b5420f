import CohortCore
import CohortStore
import Testing

@testable import CohortReport

/// Two seeds of four rounds (seed B has a fifth, abandoned round) whose numbers are easy to
/// follow by hand; the expected values in the tests below are worked out in their comments.
func handMadeSeries(label: String = "fedavg") -> ReportSeries {
  // Seed A: evaluated at rounds 1, 3, 4 (not 2); every round 10 reports, 1,000 bytes up.
  let a = [
    RoundRecord(
      round: 1, startedAt: 0, endedAt: 10, reported: 10, bytesUp: 1000, trainLoss: 2.0, evalAccuracy: 0.2),
    RoundRecord(round: 2, startedAt: 10, endedAt: 20, reported: 10, bytesUp: 1000, trainLoss: 1.5),
    RoundRecord(
      round: 3, startedAt: 20, endedAt: 30, reported: 10, bytesUp: 1000, trainLoss: 1.2, evalAccuracy: 0.5),
    RoundRecord(
      round: 4, startedAt: 30, endedAt: 40, reported: 10, bytesUp: 1000, trainLoss: 1.0, evalAccuracy: 0.7),
  ]
  // Seed B: 5 reports of 1,000 bytes per round; round 5 abandoned with nothing reported. Given
  // out of order, as nothing promises sorted input.
  let b = [
    RoundRecord(
      round: 3, startedAt: 24, endedAt: 36, reported: 5, bytesUp: 1000, trainLoss: 1.1, evalAccuracy: 0.6),
    RoundRecord(
      round: 1, startedAt: 0, endedAt: 12, reported: 5, bytesUp: 1000, trainLoss: 2.2, evalAccuracy: 0.3),
    RoundRecord(
      round: 2, startedAt: 12, endedAt: 24, reported: 5, bytesUp: 1000, trainLoss: 1.6, evalAccuracy: 0.4),
    RoundRecord(
      round: 4, startedAt: 36, endedAt: 48, reported: 5, bytesUp: 1000, trainLoss: 0.9, evalAccuracy: 0.5),
    RoundRecord(
      round: 5, startedAt: 48, endedAt: 60, outcome: .abandoned, abandonReason: "too few reports", reported: 0
    ),
  ]
  return ReportSeries(label: label, runs: [a, b])
}

@Suite struct SummaryTests {
  @Test func meanStdBestTargetAndBytesMatchHandComputedValues() throws {
    let row = try #require(
      ComparisonReport(title: "t", series: [handMadeSeries()], target: 0.55).summaryRows().first)
    // Final: A 0.7 (round 4), B 0.5 (round 4; round 5 has no evaluation). Mean 0.6; sample std
    // sqrt((0.1² + 0.1²) / 1) = sqrt(0.02) = 0.141421…
    #expect(abs(row.finalAccuracyMean! - 0.6) < 1e-12)
    #expect(abs(row.finalAccuracyStd! - 0.02.squareRoot()) < 1e-12)
    // Best: A 0.7, B 0.6 → 0.65.
    #expect(abs(row.bestAccuracy! - 0.65) < 1e-12)
    // First round ≥ 0.55: A round 4 (ends at 40 s), B round 3 (ends at 36 s) → 3.5 rounds, 38 s.
    #expect(row.roundsToTarget == 3.5)
    #expect(row.seedsReachingTarget == 2)
    #expect(row.timeToTarget == 38)
    // Bytes per device: A 1000/10 = 100, B 1000/5 = 200 (its empty round 5 skipped) → 150.
    #expect(row.bytesUpPerDevice == 150)
    #expect(row.seeds == 2 && row.evaluatedSeeds == 2)
    #expect(row.cells == ["fedavg", "2", "0.6000 ± 0.1414", "0.6500", "3.5", "38s", "150 B"])
  }

  @Test func targetReachedBySomeSeedsOrNone() throws {
    // 0.65: only A reaches it (round 4).
    let some = try #require(
      ComparisonReport(title: "t", series: [handMadeSeries()], target: 0.65).summaryRows().first)
    #expect(some.roundsToTarget == 4 && some.seedsReachingTarget == 1 && some.timeToTarget == 40)
    #expect(some.roundsToTargetText == "4.0 (1/2 seeds)")
    let none = try #require(
      ComparisonReport(title: "t", series: [handMadeSeries()], target: 0.9).summaryRows().first)
    #expect(none.roundsToTarget == nil && none.timeToTarget == nil)
    #expect(none.roundsToTargetText == "not reached")
    let noTarget = try #require(
      ComparisonReport(title: "t", series: [handMadeSeries()], target: nil).summaryRows().first)
    #expect(noTarget.roundsToTargetText == "-" && noTarget.cells[5] == "-")
  }

  @Test func oneSeedHasNoStandardDeviation() throws {
    var series = handMadeSeries()
    series.runs.removeLast()
    let row = try #require(ComparisonReport(title: "t", series: [series], target: nil).summaryRows().first)
    #expect(row.finalAccuracyMean == 0.7 && row.finalAccuracyStd == nil)
    #expect(row.cells[2] == "0.7000")
  }

  @Test func seriesWithoutEvaluationHasNoAccuracyFigures() throws {
    let run = (1...3).map { RoundRecord(round: $0, startedAt: 0, endedAt: 1, reported: 2, bytesUp: 50) }
    let row = try #require(
      ComparisonReport(title: "t", series: [ReportSeries(label: "x", runs: [run, []])], target: 0.5)
        .summaryRows().first)
    #expect(row.seeds == 2 && row.evaluatedSeeds == 0)
    #expect(row.finalAccuracyMean == nil && row.bestAccuracy == nil && row.roundsToTarget == nil)
    #expect(row.bytesUpPerDevice == 25)
    #expect(row.cells == ["x", "2", "-", "-", "not reached", "-", "25 B"])
  }

  @Test func bandsSkipRoundsWithoutValues() {
    // Seed 1 evaluated at rounds 5 and 10, seed 2 at 5 only: two points, round 10 from one seed.
    let points = BandPoint.combine([[(5, 0.4), (10, 0.8)], [(5, 0.6)]])
    #expect(
      points == [
        BandPoint(x: 5, mean: 0.5, low: 0.4, high: 0.6), BandPoint(x: 10, mean: 0.8, low: 0.8, high: 0.8),
      ])
  }

  @Test func ticksLandOnRoundNumbers() {
    let t = Ticks(covering: 0.13, 0.87)
    #expect(t.step == 0.2 && t.low == 0 && abs(t.high - 1.0) < 1e-12)
    let rounds = Ticks(covering: 0, 30, count: 8, integer: true)
    #expect(rounds.step == 5 && rounds.values == [0, 5, 10, 15, 20, 25, 30])
    let flat = Ticks(covering: 2, 2)
    #expect(flat.low < 2 && flat.high > 2)
    #expect(NumberText.tick(0.30000000000000004, step: 0.1) == "0.3")
  }
}

@Suite struct RunGroupingTests {
  @Test func seedSuffixIsRemoved() {
    #expect(
      RunGrouping.seriesName("fedadam:server_learning_rate=0.01 seed 3")
        == "fedadam:server_learning_rate=0.01")
    #expect(RunGrouping.seriesName("fedavg Seed=12") == "fedavg")
    #expect(RunGrouping.seriesName("fedprox mu=1  seed  0") == "fedprox mu=1")
    #expect(RunGrouping.seriesName("default") == nil)
    #expect(RunGrouping.seriesName("seed 3") == nil)
    #expect(RunGrouping.seriesName("myseed 3") == nil)
    #expect(RunGrouping.seriesName("fedavg seed") == nil)
  }

  @Test func runsGroupByNameInTheOrderGiven() {
    let groups = RunGrouping.group([
      (RunID(4), "fedadam seed 2"), (RunID(1), "fedavg seed 1"), (RunID(3), "fedadam seed 1"),
      (RunID(7), "default"), (RunID(8), "default"),
    ])
    #expect(
      groups == [
        .init(label: "fedadam", runs: [RunID(4), RunID(3)]), .init(label: "fedavg", runs: [RunID(1)]),
        .init(label: "default (run 7)", runs: [RunID(7)]), .init(label: "default (run 8)", runs: [RunID(8)]),
      ])
  }
}
