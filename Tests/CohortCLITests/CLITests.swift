import CohortStore
import CohortTesting
import Foundation
import Testing

/// Runs the `cohort` binary built next to this test bundle and returns its exit status and output,
/// with `environment` added to (or, for nil values, removed from) this process's.
func cohort(
  _ arguments: [String], in directory: URL = repositoryRoot, environment: [String: String?] = [:]
) throws -> (status: Int32, stdout: String, stderr: String) {
  let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    .appendingPathComponent("cohort")
  // The test runner may live inside a bundle directory; walk up until the binary is found.
  var candidate = binary
  while !FileManager.default.isExecutableFile(atPath: candidate.path) && candidate.path != "/cohort" {
    candidate = candidate.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent(
      "cohort")
  }
  let process = Process()
  process.executableURL = candidate
  process.arguments = arguments
  process.currentDirectoryURL = directory
  process.environment = merged(environment)
  let out = Pipe()
  let err = Pipe()
  process.standardOutput = out
  process.standardError = err
  try process.run()
  // Read both pipes to the end before waiting, so a chatty child cannot block on a full pipe.
  let stdoutData = out.fileHandleForReading.readDataToEndOfFile()
  let stderrData = err.fileHandleForReading.readDataToEndOfFile()
  process.waitUntilExit()
  return (
    process.terminationStatus, String(decoding: stdoutData, as: UTF8.self),
    String(decoding: stderrData, as: UTF8.self)
  )
}

@Suite struct CLITests {
  @Test func validateAcceptsEveryShippedPlanAndScenario() throws {
    let plans = try FileManager.default.contentsOfDirectory(
      atPath: repositoryRoot.appendingPathComponent("Plans").path
    )
    .filter { $0.hasSuffix(".yaml") }.map { "Plans/\($0)" }
    let scenarios = try FileManager.default.contentsOfDirectory(
      atPath: repositoryRoot.appendingPathComponent("Simulations").path
    ).filter { $0.hasSuffix(".yaml") }.map { "Simulations/\($0)" }
    let result = try cohort(["plan", "validate"] + plans + scenarios)
    #expect(result.status == 0, "\(result.stderr)")
    #expect(result.stdout.split(separator: "\n").count == plans.count + scenarios.count)
    #expect(result.stdout.split(separator: "\n").allSatisfy { $0.contains(": ok (model: ") })
  }

  @Test func validatePrintsTheModelsSizeAndRefusesAHugeModelAndAnAliasBomb() throws {
    let dir = TemporaryDirectory()
    func write(_ name: String, _ text: String) throws -> String {
      let path = dir.file(name)
      try text.write(toFile: path, atomically: true, encoding: .utf8)
      return path
    }
    let small = try write(
      "small.yaml", "name: small\nmodel: {kind: logistic_regression, inputs: 60, classes: 10}\n")
    let ok = try cohort(["plan", "validate", small])
    #expect(ok.status == 0, "\(ok.stderr)")
    #expect(ok.stdout.contains("model: 610 parameters, 0.0 MB per copy"), "\(ok.stdout)")
    // 2·10^10 parameters: refused by validation, before anything is allocated.
    let huge = try write(
      "huge.yaml", "name: huge\nmodel: {kind: mlp, inputs: 10000000, hidden: [2000], classes: 10}\n")
    let refused = try cohort(["plan", "validate", huge])
    #expect(refused.status != 0)
    #expect(refused.stderr.contains("parameters; the limit is 100000000"), "\(refused.stderr)")
    // Nested aliases that would expand to 2^30 nodes: refused quickly by the node budget.
    var bomb = "a0: &a0 [x, x]\n"
    for i in 1...30 { bomb += "a\(i): &a\(i) [*a\(i - 1), *a\(i - 1)]\n" }
    let aliases = try write("bomb.yaml", bomb + "name: bomb\nmodel: *a30\n")
    let bombed = try cohort(["plan", "validate", aliases])
    #expect(bombed.status != 0)
    #expect(bombed.stderr.contains("expands to more than 100000 YAML nodes"), "\(bombed.stderr)")
  }

  @Test func validateNamesAMisspeltKeyAndFails() throws {
    let dir = TemporaryDirectory()
    let path = dir.write(
      "bad.yaml",
      "name: bad\nmodel: {kind: logistic_regression, inputs: 60, classes: 10}\nserver: {rouds: 5}\n")
    let result = try cohort(["plan", "validate", path])
    #expect(result.status != 0)
    #expect(result.stderr.contains("server.rouds"), "\(result.stderr)")
    #expect(result.stderr.contains("did you mean rounds"), "\(result.stderr)")
    #expect(result.stderr.contains("bad.yaml:3"), "\(result.stderr)")
  }

  @Test func describePrintsPartitionStatistics() throws {
    let result = try cohort(["data", "describe", "Simulations/digits-dirichlet.yaml"])
    #expect(result.status == 0, "\(result.stderr)")
    #expect(result.stdout.contains("1,437 train, 360 test"), "\(result.stdout)")
    #expect(result.stdout.lowercased().contains("entropy"), "\(result.stdout)")
  }

  @Test func describeShowsClassCountsAndAHeatMapAndWritesItAsHTML() throws {
    let dir = TemporaryDirectory()
    let page = dir.file("data.html")
    let result = try cohort(
      ["data", "describe", "Simulations/digits-dirichlet.yaml", "--max-devices", "12", "--html", page])
    #expect(result.status == 0, "\(result.stderr)")
    #expect(result.stdout.contains("examples per class:"), "\(result.stdout)")
    #expect(result.stdout.contains("labels by device"), "\(result.stdout)")
    #expect(result.stdout.contains("device 11  "), "\(result.stdout)")
    #expect(!result.stdout.contains("device 12  "), "\(result.stdout)")
    #expect(result.stdout.contains("(showing the first 12 of 100 devices"), "\(result.stdout)")
    let html = try String(contentsOfFile: page, encoding: .utf8)
    #expect(html.contains("<svg") && html.contains("<title>device 99, class "), "\(html.prefix(400))")
    #expect(html.contains("Examples per class") && html.contains("<tr><td>9</td>"))
    // An existing page is kept unless --force.
    let again = try cohort(["data", "describe", "Simulations/digits-dirichlet.yaml", "--html", page])
    #expect(again.status != 0 && again.stderr.contains("already exists"), "\(again.stderr)")
  }

  @Test func trainRunsAndReportsAccuracy() throws {
    let result = try cohort(["train", "Simulations/digits-dirichlet.yaml", "--epochs", "5", "--json"])
    #expect(result.status == 0, "\(result.stderr)")
    let json = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
    let accuracy = json?["test_accuracy"] as? Double ?? 0
    #expect(accuracy > 0.8, "\(result.stdout)")
  }

  @Test func missingScenarioFileIsAClearError() throws {
    let result = try cohort(["data", "describe", "Simulations/nope.yaml"])
    #expect(result.status != 0)
    #expect(
      result.stderr.contains("nope.yaml") && result.stderr.contains("does not exist"), "\(result.stderr)")
  }
}

/// A small, fast scenario for end-to-end runs: 200 devices, 20 per round.
let smallScenario = """
  plan:
    name: small
    model: {kind: logistic_regression, inputs: 60, classes: 10}
    device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
    server:
      rounds: 6
      cohort: {goal: 20, over_selection: 1.3, minimum_fraction: 0.8}
      strategy: {kind: fedavg}
  data: {kind: synthetic_fedprox, alpha: 0, beta: 0, iid: true, devices: 200, max_samples: 200}
  partition: {kind: dirichlet, alpha: 0.5}
  devices: {count: 200, dropout: 0.1, check_in_interval: 1m}
  seed: 5
  """

func simulateJSON(_ arguments: [String]) throws -> [String: Any] {
  let result = try cohort(["simulate", "--json"] + arguments)
  #expect(result.status == 0, "\(result.stderr)")
  return try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] ?? [:]
}

@Suite struct SimulateCLITests {
  @Test func sameSeedSameCheckpointDifferentSeedDifferent() throws {
    let dir = TemporaryDirectory()
    let scenario = dir.write("small.yaml", smallScenario)
    let a = try simulateJSON([scenario, "--db", dir.file("a.sqlite")])
    let b = try simulateJSON([scenario, "--db", dir.file("b.sqlite")])
    let c = try simulateJSON([scenario, "--db", dir.file("c.sqlite"), "--seed", "6"])
    let sha = a["checkpoint_sha256"] as? String
    #expect(sha != nil && sha == b["checkpoint_sha256"] as? String)
    #expect(sha != c["checkpoint_sha256"] as? String)
    #expect(a["rounds_attempted"] as? Int == 6)
  }

  @Test func anAsynchronousPlanSimulatesItsVersions() throws {
    let dir = TemporaryDirectory()
    let yaml = smallScenario.replacingOccurrences(
      of: "    cohort: {goal: 20, over_selection: 1.3, minimum_fraction: 0.8}\n",
      with: "    mode: async\n    async: {concurrency: 30, buffer: 10}\n")
    #expect(yaml.contains("mode: async"))
    let scenario = dir.write("async.yaml", yaml)
    let a = try simulateJSON([scenario, "--db", dir.file("a.sqlite")])
    let b = try simulateJSON([scenario, "--db", dir.file("b.sqlite")])
    #expect(a["rounds_attempted"] as? Int == 6 && a["too_stale"] as? Int != nil, "\(a)")
    let sha = a["checkpoint_sha256"] as? String
    #expect(sha != nil && sha == b["checkpoint_sha256"] as? String)
  }

  @Test func aSecondWriterOfTheSameDatabaseRefusesAtStart() throws {
    let dir = TemporaryDirectory()
    let scenario = dir.write("small.yaml", smallScenario)
    let db = dir.file("held.sqlite")
    // This test process holds the database as `cohort serve` would.
    let held = try DatabaseWriterLock.acquire(database: db, holder: "cohort serve plan.yaml")
    let refused = try cohort(["simulate", scenario, "--db", db])
    #expect(refused.status != 0)
    #expect(
      refused.stderr.contains("being written by another process (pid \(getpid()): cohort serve"),
      "\(refused.stderr)")
    withExtendedLifetime(held) {}
  }

  @Test func killedRunResumesToTheSameCheckpoint() throws {
    let dir = TemporaryDirectory()
    let scenario = dir.write("small.yaml", smallScenario)
    let whole = try simulateJSON([scenario, "--db", dir.file("whole.sqlite")])

    // The run kills itself (SIGKILL, no clean-up) right after committing round 3…
    let db = dir.file("crash.sqlite")
    let crashed = try cohort(["simulate", scenario, "--db", db, "--crash-after-round", "3"])
    #expect(crashed.status != 0)
    let listed = try cohort(["runs", "show", "1", "--db", db])
    #expect(listed.stdout.contains("rounds committed 3"), "\(listed.stdout)")

    // …and --resume finishes it with the same final model as the uninterrupted run.
    let resumed = try simulateJSON(["--resume", "1", "--db", db])
    #expect(resumed["checkpoint_sha256"] as? String == whole["checkpoint_sha256"] as? String)
    #expect(resumed["rounds_attempted"] as? Int == whole["rounds_attempted"] as? Int)
  }

  @Test func killedSecureRunResumesToTheSameCheckpoint() throws {
    // Secure aggregation keeps device updates outside the coordinator until a round's protocol
    // runs; a run killed between rounds must still resume to exactly the same model.
    let dir = TemporaryDirectory()
    let secure = smallScenario.replacingOccurrences(
      of: "    strategy: {kind: fedavg}\n",
      with: "    strategy: {kind: fedavg}\n  secure_aggregation: {enabled: true}\n")
    #expect(secure != smallScenario)
    let scenario = dir.write("secure.yaml", secure)
    let whole = try simulateJSON([scenario, "--db", dir.file("whole.sqlite")])
    let db = dir.file("crash.sqlite")
    let crashed = try cohort(["simulate", scenario, "--db", db, "--crash-after-round", "2"])
    #expect(crashed.status != 0)
    let resumed = try simulateJSON(["--resume", "1", "--db", db])
    #expect(resumed["checkpoint_sha256"] as? String == whole["checkpoint_sha256"] as? String)
    let shown = try cohort(["runs", "show", "1", "--db", db])
    #expect(shown.stdout.contains("secure aggregation, mean per round over 6 rounds"), "\(shown.stdout)")
  }

  @Test func runsAndModelExportReadTheDatabase() throws {
    let dir = TemporaryDirectory()
    let scenario = dir.write("small.yaml", smallScenario)
    let db = dir.file("r.sqlite")
    _ = try simulateJSON([scenario, "--db", db, "--rounds", "2"])
    let list = try cohort(["runs", "list", "--db", db])
    #expect(list.status == 0 && list.stdout.contains("small seed 5"), "\(list.stdout)\(list.stderr)")
    let csv = try cohort(["runs", "export", "1", "--csv", "--db", db])
    #expect(csv.stdout.split(separator: "\n").count == 3, "\(csv.stdout)")
    let out = dir.file("m.safetensors")
    let export = try cohort(["model", "export", "1", "--db", db, "--out", out])
    #expect(export.status == 0, "\(export.stderr)")
    #expect(FileManager.default.fileExists(atPath: out))
    let missing = try cohort(["runs", "show", "9", "--db", db])
    #expect(missing.status != 0 && missing.stderr.contains("cohort runs list"), "\(missing.stderr)")
  }
}

@Suite struct CompareCLITests {
  @Test func compareRunsEveryStrategyAndSeedAndWritesTheReport() throws {
    let dir = TemporaryDirectory()
    let scenario = dir.write("small.yaml", smallScenario)
    let db = dir.file("c.sqlite")
    let result = try cohort([
      "compare", scenario, "--strategy", "fedavg", "--strategy", "fedadam:server_learning_rate=0.01",
      "--seeds", "2",
      "--rounds", "3", "--db", db, "--out", dir.file("c.html"),
    ])
    #expect(result.status == 0, "\(result.stderr)")
    #expect(result.stdout.contains("4 runs") && result.stdout.contains("fedadam:server_learning_rate=0.01"))
    #expect(FileManager.default.fileExists(atPath: dir.file("c.html")))
    let list = try cohort(["runs", "list", "--db", db])
    #expect(list.stdout.contains("fedavg seed 5") && list.stdout.contains("fedavg seed 6"), "\(list.stdout)")
  }

  @Test func aBadStrategyIsRefusedBeforeAnythingRuns() throws {
    let dir = TemporaryDirectory()
    let scenario = dir.write("small.yaml", smallScenario)
    let result = try cohort([
      "compare", scenario, "--strategy", "fedadam:eta=0.01", "--db", dir.file("c.sqlite"),
    ])
    #expect(result.status != 0)
    #expect(
      result.stderr.contains("eta") && result.stderr.contains("server_learning_rate"), "\(result.stderr)")
    #expect(!FileManager.default.fileExists(atPath: dir.file("c.sqlite")))
  }
}
