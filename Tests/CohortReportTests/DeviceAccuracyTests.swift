import CohortCore
import CohortStore
import Testing

@testable import CohortReport

/// Devices' own accuracies, worked out by hand: the pooled values of round 1 are 0.2 … 1.0.
func deviceEvaluatedSeries(label: String = "fedavg") -> ReportSeries {
  func e(_ round: Int, _ device: Int, _ accuracy: Double) -> DeviceEvaluationRecord {
    DeviceEvaluationRecord(round: round, device: device, accuracy: accuracy, loss: 1 - accuracy, examples: 5)
  }
  var series = handMadeSeries(label: label)
  // Seed A: rounds 1 and 3 (its last); seed B: round 1 only.
  series.deviceEvaluations = [
    [e(1, 0, 0.4), e(1, 1, 0.2), e(3, 0, 0.9), e(3, 4, 0.7)],
    [e(1, 2, 1.0), e(1, 3, 0.6), e(1, 7, 0.8)],
  ]
  return series
}

@Suite struct DeviceAccuracyTests {
  @Test func percentilesInterpolateBetweenRanksAsNumPyDoes() throws {
    // Five values: rank (n − 1)·p = 0.4, 2, 3.6 → 0.2 + 0.4·0.2, 0.6, 0.8 + 0.6·0.2.
    let five = try #require(Percentiles([1.0, 0.4, 0.8, 0.2, 0.6]))
    #expect(abs(five.p10 - 0.28) < 1e-12 && five.median == 0.6 && abs(five.p90 - 0.92) < 1e-12)
    #expect(five.count == 5 && five.text == "0.280 / 0.600 / 0.920")
    // Two: 0.1, 0.5, 0.9 of the way from the first to the second.
    let two = try #require(Percentiles([3, 1]))
    #expect(abs(two.p10 - 1.2) < 1e-12 && two.median == 2 && abs(two.p90 - 2.8) < 1e-12)
    // Four: ranks 0.3, 1.5, 2.7.
    let four = try #require(Percentiles([10, 20, 30, 40]))
    #expect(abs(four.p10 - 13) < 1e-12 && four.median == 25 && abs(four.p90 - 37) < 1e-12)
    #expect(Percentiles([0.5]) == Percentiles(p10: 0.5, median: 0.5, p90: 0.5, count: 1))
    #expect(Percentiles([]) == nil && Percentiles([.nan]) == nil)
    #expect(Percentiles([.nan, 0.3, .infinity])?.count == 1)
    #expect(Percentiles.percentile([1, 2, 3], 0) == 1 && Percentiles.percentile([1, 2, 3], 1) == 3)
  }

  @Test func seedsArePooledPerRoundAndAtEachSeedsLastRound() throws {
    let series = deviceEvaluatedSeries()
    let byRound = Statistics.deviceAccuracyByRound(series)
    #expect(byRound.map(\.round) == [1, 3])
    // Round 1: A's 0.4, 0.2 and B's 1.0, 0.6, 0.8.
    #expect(byRound[0].percentiles == Percentiles([0.2, 0.4, 0.6, 0.8, 1.0]))
    #expect(byRound[1].percentiles == Percentiles([0.7, 0.9]))
    // Final: A's round 3 (0.9, 0.7) and B's round 1 (1.0, 0.6, 0.8): 0.6, 0.7, 0.8, 0.9, 1.0 →
    // ranks 0.4, 2, 3.6 → 0.64, 0.8, 0.96.
    let row = try #require(ComparisonReport(title: "t", series: [series], target: nil).summaryRows().first)
    let final = try #require(row.finalDeviceAccuracy)
    #expect(abs(final.p10 - 0.64) < 1e-12 && final.median == 0.8 && abs(final.p90 - 0.96) < 1e-12)
    #expect(final.count == 5)
    let columns = SummaryRow.columns(for: [row])
    #expect(columns == SummaryRow.columns + [SummaryRow.deviceAccuracyColumn])
    #expect(row.cells(in: columns).last == "0.640 / 0.800 / 0.960")
    // Without evaluations: no column, the row as before.
    let plain = try #require(
      ComparisonReport(title: "t", series: [handMadeSeries()], target: nil).summaryRows().first)
    #expect(plain.finalDeviceAccuracy == nil && SummaryRow.columns(for: [plain]) == SummaryRow.columns)
    #expect(plain.cells(in: SummaryRow.columns(for: [plain])) == plain.cells)
  }

  @Test func theChartAndColumnAppearOnlyWithDeviceEvaluations() throws {
    let with = ComparisonReport(
      title: "t", series: [deviceEvaluatedSeries(), handMadeSeries(label: "no devices")], target: nil)
    let figure = try #require(with.figures().first { $0.name == "device-accuracy-by-round" })
    #expect(figure.caption.contains("pooled"))
    // One band and one line for the series that has device evaluations (rounds 1 and 3).
    #expect(figure.svg.components(separatedBy: "<polygon class=\"band\"").count == 2)
    #expect(figure.svg.components(separatedBy: "<polyline class=\"mean\"").count == 2)
    #expect(
      tagsBalance(figure.standaloneSVG.split(separator: "\n", maxSplits: 1).last.map(String.init) ?? "").ok)
    let html = with.html()
    #expect(html.contains("Accuracy across devices") && html.contains(SummaryRow.deviceAccuracyColumn))
    #expect(html.contains("0.640 / 0.800 / 0.960"))
    #expect(tagsBalance(html).ok, "\(tagsBalance(html).problem)")
    #expect(!containsNonFiniteNumber(html))

    let without = ComparisonReport(title: "t", series: [handMadeSeries()], target: nil)
    #expect(!without.figures().contains { $0.name == "device-accuracy-by-round" })
    #expect(!without.html().contains("Accuracy across devices"))
    #expect(!without.html().contains(SummaryRow.deviceAccuracyColumn))
    // Empty lists per run are no evaluations.
    var empty = handMadeSeries()
    empty.deviceEvaluations = [[], []]
    #expect(
      !ComparisonReport(title: "t", series: [empty], target: nil).figures().contains {
        $0.name == "device-accuracy-by-round"
      })
  }
}
