import CohortCore
import CohortReport
import CohortStore
import CohortTesting
import Foundation
import Testing

/// Two tiny scenarios: the small one, and the same on non-IID data.
private func writeScenarios(_ dir: TemporaryDirectory) -> (String, String) {
  let a = dir.write("tiny-a.yaml", smallScenario)
  let b = dir.write(
    "tiny-b.yaml",
    smallScenario.replacingOccurrences(of: "alpha: 0, beta: 0, iid: true", with: "alpha: 0.5, beta: 0.5"))
  return (a, b)
}

@Suite struct ExperimentCLITests {
  /// The acceptance test: 2 scenarios × 3 variants × 3 seeds in one command, one report in which
  /// every series is one scenario and variant with its three seeds.
  @Test func anExperimentGivesOneSeriesPerScenarioAndVariant() throws {
    let dir = TemporaryDirectory()
    _ = writeScenarios(dir)
    let experiment = dir.write(
      "experiment.yaml",
      """
      name: acceptance
      scenarios: [tiny-a.yaml, tiny-b.yaml]
      variants:
        - label: fedavg
        - label: fedadam
          set: {server.strategy: {kind: fedadam, server_learning_rate: 0.01}}
        - label: two-epochs
          set: {device.epochs: 2}
      seeds: [1, 2, 3]
      rounds: 2
      """)
    let db = dir.file("e.sqlite")
    let out = dir.file("e.html")
    let result = try cohort([
      "compare", "--experiment", experiment, "--db", db, "--out", out, "--svg-dir", dir.file("figures"),
    ])
    #expect(result.status == 0, "\(result.stderr)")
    #expect(result.stdout.contains("2 scenarios × 3 variants × 3 seeds = 18 runs"), "\(result.stdout)")
    #expect(result.stdout.contains("[18/18]"), "\(result.stdout)")  // piped: a line per finished run

    // The report's grouping, rebuilt from the database as `cohort report` builds it.
    let store = try ResultsStore(path: db)
    let runs = try store.runs()
    #expect(runs.count == 18)
    #expect(runs.allSatisfy { $0.labels.experiment == "acceptance" && $0.status == .finished })
    let groups = RunGrouping.group(
      try runs.map { r in
        RunGrouping.Run(
          id: r.id, name: r.name, labels: r.labels, configuration: try store.configurationFingerprint(r.id))
      })
    #expect(groups.count == 6)
    #expect(Set(groups.map(\.label)).count == 6)
    let byID = Dictionary(uniqueKeysWithValues: runs.map { ($0.id, $0) })
    var cells = Set<String>()
    for group in groups {
      let members = group.runs.map { byID[$0]! }
      #expect(Set(members.map(\.seed)) == [1, 2, 3], "\(group.label)")
      #expect(Set(members.map(\.labels)).count == 1, "\(group.label)")
      let labels = members[0].labels
      #expect(group.label == "\(labels.scenario!) · \(labels.variant!)")
      cells.insert(group.label)
    }
    #expect(
      cells == [
        "tiny-a · fedavg", "tiny-a · fedadam", "tiny-a · two-epochs", "tiny-b · fedavg", "tiny-b · fedadam",
        "tiny-b · two-epochs",
      ])
    let series = try groups.map { g in
      ReportSeries(label: g.label, runs: try g.runs.map { try store.rounds($0) })
    }
    let rows = ComparisonReport(title: "t", series: series, target: nil).summaryRows()
    #expect(rows.count == 6 && rows.allSatisfy { $0.seeds == 3 && $0.evaluatedSeeds == 3 })

    // The written report has the same six series, and each chart is also an SVG file.
    let html = try String(contentsOfFile: out, encoding: .utf8)
    #expect(html.components(separatedBy: "<td class=\"series\">").count - 1 == 6)
    for label in cells { #expect(html.contains("<td class=\"series\">\(label)</td>"), "\(label)") }
    #expect(FileManager.default.fileExists(atPath: dir.file("figures/accuracy-by-round.svg")))

    // `runs list --series` shows the same series; `report` takes ranges; `runs delete` removes.
    let list = try cohort(["runs", "list", "--series", "--db", db])
    #expect(list.status == 0, "\(list.stderr)")
    #expect(list.stdout.split(separator: "\n").count == 7, "\(list.stdout)")
    for label in cells { #expect(list.stdout.contains(label), "\(list.stdout)") }
    let report = try cohort(["report", "1-9", "10,11-18", "--db", db, "--out", dir.file("again.html")])
    #expect(report.status == 0, "\(report.stderr)")
    let again = try String(contentsOfFile: dir.file("again.html"), encoding: .utf8)
    for label in cells { #expect(again.contains("<td class=\"series\">\(label)</td>"), "\(label)") }
    let refused = try cohort(["runs", "delete", "1-3", "--db", db])
    #expect(refused.status != 0 && refused.stderr.contains("--yes"), "\(refused.stderr)")
    let deleted = try cohort(["runs", "delete", "1-3", "--yes", "--db", db])
    #expect(
      deleted.status == 0 && deleted.stdout.contains("deleted runs 1-3"), "\(deleted.stdout)\(deleted.stderr)"
    )
    #expect(try store.runs().count == 15)
  }

  @Test func variantsFromFlagsAndTheirErrors() throws {
    let dir = TemporaryDirectory()
    let (a, _) = writeScenarios(dir)
    let bad = try cohort([
      "compare", "--scenario", a, "--variant", "typo:device.epoch=2", "--db", dir.file("x.sqlite"),
    ])
    #expect(bad.status != 0)
    #expect(
      bad.stderr.contains("with variant typo") && bad.stderr.contains("device.epoch")
        && bad.stderr.contains("epochs"), "\(bad.stderr)")
    #expect(!FileManager.default.fileExists(atPath: dir.file("x.sqlite")))

    let db = dir.file("f.sqlite")
    let ok = try cohort([
      "compare", "--scenario", a, "--variant", "base", "--variant", "e2:device.epochs=2", "--seeds", "7,9",
      "--rounds", "2", "--db", db, "--out", dir.file("f.html"),
    ])
    #expect(ok.status == 0, "\(ok.stderr)")
    let runs = try ResultsStore(path: db).runs()
    #expect(runs.map(\.name) == ["base seed 7", "base seed 9", "e2 seed 7", "e2 seed 9"])
    #expect(runs.allSatisfy { $0.labels.scenario == "tiny-a" })
  }
}

@Suite struct ExtendRunCLITests {
  /// An extension replays the last rounds from their checkpoints and the schedule of the run's
  /// length: a run that pruned them, or whose cosine schedule anneals over its rounds, is refused
  /// with the way on, not extended into something else.
  @Test func aRunThatCannotBeExtendedExactlyIsRefused() throws {
    let dir = TemporaryDirectory()
    let scenario = dir.write("small.yaml", smallScenario)
    let pruned = dir.file("pruned.sqlite")
    _ = try simulateJSON([scenario, "--db", pruned, "--rounds", "3", "--keep-checkpoints", "last"])
    let refused = try cohort(["simulate", "--resume", "1", "--rounds", "5", "--db", pruned])
    #expect(refused.status != 0 && refused.stderr.contains("--keep-checkpoints"), "\(refused.stderr)")
    let cosine = dir.write(
      "cosine.yaml",
      smallScenario.replacingOccurrences(
        of: "optimizer: {kind: sgd, learning_rate: 0.05}",
        with: "optimizer: {kind: sgd, learning_rate: 0.05, schedule: {kind: cosine}}"))
    let annealed = dir.file("cosine.sqlite")
    _ = try simulateJSON([cosine, "--db", annealed, "--rounds", "3"])
    let refusedCosine = try cohort(["simulate", "--resume", "1", "--rounds", "5", "--db", annealed])
    #expect(
      refusedCosine.status != 0 && refusedCosine.stderr.contains("cosine learning-rate schedule"),
      "\(refusedCosine.stderr)")
  }

  /// A finished run of 3 rounds extended to 6 ends exactly as one run of 6 rounds: the same final
  /// checkpoint and the same rounds (evaluation of round 3 included, which the short run had only
  /// because it was its last).
  @Test(arguments: [false, true])
  func extendingARunEndsAsOneLongerRun(sparseEvaluation: Bool) throws {
    let dir = TemporaryDirectory()
    let text =
      sparseEvaluation
      ? smallScenario.replacingOccurrences(
        of: "strategy: {kind: fedavg}", with: "strategy: {kind: fedavg}\n    evaluation: {every: 2}")
      : smallScenario
    let scenario = dir.write("small.yaml", text)
    let short = dir.file("short.sqlite")
    let long = dir.file("long.sqlite")
    _ = try simulateJSON([scenario, "--db", short, "--rounds", "3"])
    let extended = try simulateJSON(["--resume", "1", "--rounds", "6", "--db", short])
    let once = try simulateJSON([scenario, "--db", long, "--rounds", "6"])
    #expect(extended["rounds_committed"] as? Int == 6)
    let sha = extended["checkpoint_sha256"] as? String
    #expect(sha != nil && sha == once["checkpoint_sha256"] as? String)
    func rounds(_ path: String) throws -> [RoundRecord] {
      try ResultsStore(path: path).rounds(RunID(1)).map { r in
        var r = r
        r.realSeconds = nil  // the machine's time, which no two runs share
        return r
      }
    }
    #expect(try rounds(short) == rounds(long))
    #expect(try ResultsStore(path: short).devices(RunID(1)) == ResultsStore(path: long).devices(RunID(1)))
    #expect(
      try ResultsStore(path: short).deviceEvaluations(RunID(1))
        == ResultsStore(path: long).deviceEvaluations(RunID(1)))
    #expect(try ResultsStore(path: short).scenario(RunID(1)).plan.server.rounds == 6)
    // Shortening is refused.
    let shorter = try cohort(["simulate", "--resume", "1", "--rounds", "4", "--db", short])
    #expect(shorter.status != 0 && shorter.stderr.contains("would shorten it"), "\(shorter.stderr)")
  }
}
