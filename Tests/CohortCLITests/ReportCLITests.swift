import CohortTesting
import Foundation
import Testing

@Suite struct ReportCLITests {
  @Test func reportWritesHTMLAndPrintsTheSummary() throws {
    let dir = TemporaryDirectory()
    let scenario = dir.write("small.yaml", smallScenario)
    let db = dir.file("r.sqlite")
    _ = try simulateJSON([scenario, "--db", db, "--rounds", "3"])
    _ = try simulateJSON([scenario, "--db", db, "--rounds", "3", "--seed", "6"])
    let out = dir.file("reports/r.html")
    let result = try cohort([
      "report", "1", "2", "--db", db, "--out", out, "--target", "0.3", "--title", "A & B",
    ])
    #expect(result.status == 0, "\(result.stderr)")
    // `simulate` names runs "small seed 5" and "small seed 6": one series over two seeds.
    #expect(result.stdout.contains("small") && !result.stdout.contains("(run 1)"), "\(result.stdout)")
    #expect(result.stdout.contains("2 seeds") || result.stdout.contains("±"), "\(result.stdout)")
    #expect(result.stdout.contains("final acc (mean ± std)") && result.stdout.contains("wrote \(out)"))
    let html = try String(contentsOfFile: out, encoding: .utf8)
    #expect(html.contains("<h1>A &amp; B</h1>") && html.contains("<svg"))
    // The report is there now: writing it again needs --force.
    let again = try cohort(["report", "1", "--db", db, "--out", out])
    #expect(again.status != 0 && again.stderr.contains("already exists") && again.stderr.contains("--force"))
    #expect(try String(contentsOfFile: out, encoding: .utf8) == html)
    let forced = try cohort(["report", "1", "--db", db, "--out", out, "--force"])
    #expect(forced.status == 0, "\(forced.stderr)")
    let exported = dir.file("rounds.csv")
    #expect(try cohort(["runs", "export", "1", "--csv", "--db", db, "--out", exported]).status == 0)
    let exportedAgain = try cohort(["runs", "export", "1", "--csv", "--db", db, "--out", exported])
    #expect(exportedAgain.status != 0 && exportedAgain.stderr.contains("already exists"))
  }

  @Test func unknownRunsAndUnevaluatedRunsAreClearErrors() throws {
    let dir = TemporaryDirectory()
    // Evaluated every 5 rounds (and at the last); killed after round 1: no round has a test accuracy.
    let scenario = dir.write(
      "sparse.yaml",
      smallScenario.replacingOccurrences(
        of: "strategy: {kind: fedavg}", with: "strategy: {kind: fedavg}\n    evaluation: {every: 5}"))
    let db = dir.file("r.sqlite")
    let crashed = try cohort(["simulate", scenario, "--db", db, "--crash-after-round", "1"])
    #expect(crashed.status != 0)
    let unknown = try cohort(["report", "1", "9", "--db", db, "--out", dir.file("x.html")])
    #expect(unknown.status != 0)
    #expect(
      unknown.stderr.contains("no run 9") && unknown.stderr.contains("cohort runs list"), "\(unknown.stderr)")
    let unevaluated = try cohort(["report", "1", "--db", db, "--out", dir.file("x.html")])
    #expect(unevaluated.status != 0)
    #expect(unevaluated.stderr.contains("no evaluated rounds"), "\(unevaluated.stderr)")
    #expect(!FileManager.default.fileExists(atPath: dir.file("x.html")))
  }
}
