import CohortTesting
import Foundation
import Testing

/// Runs the `cohort` binary built next to this test bundle and returns its exit status and output.
func cohort(_ arguments: [String], in directory: URL = repositoryRoot) throws -> (
  status: Int32, stdout: String, stderr: String
) {
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
    #expect(result.stdout.split(separator: "\n").allSatisfy { $0.hasSuffix(": ok") })
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
