import CohortCore
import CohortStore
import CohortTesting
import Foundation
import Testing

@testable import CohortReport

/// Checks that every element opened is closed, in order: enough structure to know a browser
/// (or any HTML/XML parser) sees the document as we wrote it. Void elements and `/>` close
/// themselves; text between tags must not contain a stray `<`.
func tagsBalance(_ html: String) -> (ok: Bool, problem: String) {
  let voids: Set<String> = ["meta", "br", "hr", "img", "link", "input"]
  var stack: [String] = []
  var rest = Substring(html)
  while let open = rest.firstIndex(of: "<") {
    guard let close = rest[open...].firstIndex(of: ">") else { return (false, "unclosed <") }
    let tag = rest[rest.index(after: open)..<close]
    rest = rest[rest.index(after: close)...]
    if tag.hasPrefix("!") { continue }  // <!DOCTYPE html>
    if tag.contains("<") { return (false, "< inside a tag: \(tag)") }
    if tag.hasPrefix("/") {
      let name = String(tag.dropFirst())
      guard stack.popLast() == name else {
        return (false, "</\(name)> does not close \(stack.last ?? "nothing")")
      }
      continue
    }
    let name = String(tag.prefix { !$0.isWhitespace && $0 != "/" })
    if tag.hasSuffix("/") || voids.contains(name) { continue }
    stack.append(name)
  }
  return stack.isEmpty ? (true, "") : (false, "unclosed: \(stack)")
}

/// "nan" or "inf" as a number (what `String(format:)` writes for them), not inside a word.
func containsNonFiniteNumber(_ html: String) -> Bool {
  html.contains(/(?i)(^|[^a-z])-?(nan|inf)([^a-z]|$)/)
}

/// A seeded pseudo-random series (the project's RandomStream), so the determinism test covers
/// awkward numbers.
func randomSeries(label: String, seeds: Int, rounds: Int, seed: UInt64) -> ReportSeries {
  var generator = RandomStream(seed: seed)
  var runs: [[RoundRecord]] = []
  for _ in 0..<seeds {
    var run: [RoundRecord] = []
    for r in 1...rounds {
      let x = Double(r)
      let evaluated = r % 3 == 0
      let noise = Double.random(in: 0...0.05, using: &generator)
      var record = RoundRecord(round: r, startedAt: (x - 1) * 61.7, endedAt: x * 61.7, reported: 80)
      record.bytesUp = 80 * 2_440
      record.trainLoss = 2.3 / x + 2 * noise
      record.evalLoss = evaluated ? 2.0 / x : nil
      record.evalAccuracy = evaluated ? min(1, 0.1 + 0.03 * x + noise) : nil
      run.append(record)
    }
    runs.append(run)
  }
  return ReportSeries(label: label, runs: runs)
}

@Suite struct HTMLTests {
  let report = ComparisonReport(
    title: "FedAvg vs FedAdam",
    series: [handMadeSeries(), randomSeries(label: "fedadam", seeds: 3, rounds: 30, seed: 7)],
    target: 0.55, notes: ["from test"])

  @Test func documentIsWellFormedAndSelfContained() {
    let html = report.html()
    let balance = tagsBalance(html)
    #expect(balance.ok, "\(balance.problem)")
    #expect(html.hasPrefix("<!DOCTYPE html>"))
    for forbidden in ["http:", "https:", "<script", "url(", "@import", "src=", "href="] {
      #expect(!html.lowercased().contains(forbidden), "found \(forbidden)")
    }
    #expect(!containsNonFiniteNumber(html))
    // Accuracy (by round, by time, by bytes: the series upload differently), target bars, losses.
    #expect(html.components(separatedBy: "<svg class=\"chart\"").count - 1 == 6)
    #expect(html.contains("0.6000 ± 0.1414"))  // the summary row, as summaryRows() has it
    #expect(html.contains("target 0.55"))
  }

  @Test func sameInputSameBytes() {
    let again = ComparisonReport(
      title: "FedAvg vs FedAdam",
      series: [handMadeSeries(), randomSeries(label: "fedadam", seeds: 3, rounds: 30, seed: 7)],
      target: 0.55, notes: ["from test"])
    #expect(report.html() == report.html())
    #expect(Array(report.html().utf8) == Array(again.html().utf8))
  }

  @Test func labelsTitlesAndNotesAreEscaped() {
    let nasty = "a<b & \"c\" </svg>"
    let html = ComparisonReport(
      title: "<title>&", series: [handMadeSeries(label: nasty)], target: 0.5, notes: ["<script>x</script>"]
    ).html()
    #expect(tagsBalance(html).ok, "\(tagsBalance(html).problem)")
    #expect(!html.contains(nasty) && !html.contains("<script"))
    #expect(html.contains("a&lt;b &amp; &quot;c&quot; &lt;/svg&gt;"))
    #expect(html.contains("<h1>&lt;title&gt;&amp;</h1>"))
  }

  @Test func emptyAndUnevaluatedInputStillRenders() {
    for series in [
      [], [ReportSeries(label: "nothing", runs: [])],
      [ReportSeries(label: "no eval", runs: [[RoundRecord(round: 1, startedAt: 0, endedAt: 1)]])],
    ] {
      let html = ComparisonReport(title: "empty", series: series, target: 0.5).html()
      #expect(tagsBalance(html).ok, "\(tagsBalance(html).problem)")
      #expect(html.contains("no rounds with values to plot"))
      #expect(!containsNonFiniteNumber(html))
    }
  }

  @Test func sparseEvaluationDrawsOnlyEvaluatedRounds() throws {
    // One seed evaluated every 5 rounds of 20: the accuracy line has 4 points.
    let run = (1...20).map { r in
      RoundRecord(
        round: r, startedAt: 0, endedAt: 1, trainLoss: 1, evalAccuracy: r % 5 == 0 ? Double(r) / 20 : nil)
    }
    let html = ComparisonReport(title: "sparse", series: [ReportSeries(label: "s", runs: [run])], target: nil)
      .html()
    let accuracy = try #require(html.components(separatedBy: "<svg class=\"chart\"").dropFirst().first)
    let line = try #require(accuracy.components(separatedBy: "<polyline").dropFirst().first)
    let points = try #require(
      line.components(separatedBy: "points=\"").dropFirst().first?.prefix { $0 != "\"" })
    #expect(points.split(separator: " ").count == 4)
  }

  @Test func endToEndFromAResultsStore() throws {
    let store = try ResultsStore.inMemory()
    let plan = Plan(
      name: "tiny", model: ModelPlan(kind: .logisticRegression, inputShape: [4], classes: 3),
      server: ServerPlan(rounds: 3, cohort: CohortPlan(goal: 5)))
    let scenario = Scenario(
      planPath: "tiny.yaml", plan: plan, data: .syntheticFedProx(.init(alpha: 0, beta: 0, devices: 10)),
      partition: .natural, devices: PopulationPlan(), seed: 1)
    var named: [(id: RunID, name: String)] = []
    for (name, accuracy) in [("fedavg seed 1", 0.5), ("fedavg seed 2", 0.7), ("fedadam seed 1", 0.96)] {
      let id = try store.createRun(name: name, scenario: scenario, createdAt: Date(timeIntervalSince1970: 0))
      for r in 1...3 {
        try store.commitRound(
          id,
          RoundRecord(
            round: r, startedAt: Double(r - 1), endedAt: Double(r), reported: 5, bytesUp: 500, trainLoss: 1,
            evalAccuracy: accuracy * Double(r) / 3),
          checkpoint: nil, devices: [])
      }
      named.append((id, try store.run(id).name))
    }
    let series = try RunGrouping.group(named).map { g in
      ReportSeries(label: g.label, runs: try g.runs.map { try store.rounds($0) })
    }
    let rows = ComparisonReport(title: "e2e", series: series, target: 0.6).summaryRows()
    #expect(rows.map(\.label) == ["fedavg", "fedadam"])
    #expect(abs(rows[0].finalAccuracyMean! - 0.6) < 1e-12)
    #expect(rows[0].roundsToTarget == 3 && rows[0].seedsReachingTarget == 1)  // only seed 2 reaches 0.6
    #expect(rows[1].roundsToTarget == 2)  // 0.96 · 2/3 = 0.64
    #expect(rows[1].bytesUpPerDevice == 100)
  }
}
