import CohortCore
import CohortDevice
import CohortML
import Foundation
import Testing

@testable import CohortProtocol

/// A device trains with the optimizer and schedule of the plan JSON it is sent.
@Suite struct DevicePlanJSONTests {
  func plan(_ optimizer: String) throws -> Plan {
    try Plan.parse(
      yaml: """
        name: p
        model: {kind: logistic_regression, inputs: 60, classes: 10, init: he_normal}
        device: {epochs: 2, batch_size: 5, optimizer: \(optimizer)}
        server: {rounds: 20}
        """, file: "p.yaml")
  }

  @Test func theOptimizerAndScheduleSurviveThePlanJSON() throws {
    for optimizer in [
      "{kind: adam, learning_rate: 0.003, beta1: 0.85, beta2: 0.995, epsilon: 1e-7, weight_decay: 0.01, "
        + "schedule: {kind: cosine, min_learning_rate: 0.0001}}",
      "{kind: sgd, learning_rate: 0.1, momentum: 0.9, schedule: {kind: step, step_size: 5, gamma: 0.5}}",
      "{kind: sgd, learning_rate: 0.1}",
    ] {
      let server = try plan(optimizer)
      // What the device does with the task's plan JSON (DeviceConversation.taskReceived).
      let received = try JSONDecoder().decode(Plan.self, from: server.deviceJSON)
      #expect(received == server, "\(optimizer)")
      #expect(DeviceConversation.problem(of: received) == nil, "\(optimizer)")
      let simulated = try LocalTraining(plan: server)
      let device = try LocalTraining(plan: received)
      for round in [1, 2, 7, 20, 21] {
        #expect(
          device.training(round: round) == simulated.training(round: round), "\(optimizer) round \(round)")
      }
    }
    let adam = try LocalTraining(
      plan: try plan("{kind: adam, schedule: {kind: step, step_size: 5, gamma: 0.5}}"))
    #expect(adam.training(round: 6).optimizer == .adam(learningRate: Float(0.001 * 0.5)))
    #expect(adam.training(round: 5).optimizer == .adam(learningRate: 0.001))
  }

  /// In async mode a task names the version it trains on (from 0); the schedule counts the
  /// version being made, as a synchronous round counts itself, on devices and in the simulator.
  @Test func inAsyncModeTheScheduleCountsTheVersionBeingMade() throws {
    let sync = try plan("{kind: sgd, learning_rate: 0.1, schedule: {kind: step, step_size: 2, gamma: 0.5}}")
    var async = sync
    async.server.mode = .async
    let received = try JSONDecoder().decode(Plan.self, from: async.deviceJSON)
    #expect(received.server.mode == .async)
    let rounds = try LocalTraining(plan: sync)
    let versions = try LocalTraining(plan: received)
    for version in 0...6 {
      #expect(versions.training(round: version) == rounds.training(round: version + 1), "version \(version)")
    }
  }

  @Test func aDeviceRefusesOptimizerValuesNoPlanReaderWouldAccept() throws {
    var p = try plan("{kind: adam}")
    p.device.optimizer.beta1 = 1
    #expect(DeviceConversation.problem(of: p)?.contains("beta1") == true)
    p = try plan("{kind: adam}")
    p.device.optimizer.epsilon = 0
    #expect(DeviceConversation.problem(of: p)?.contains("epsilon") == true)
    p = try plan("{kind: sgd}")
    p.device.optimizer.learningRate = .infinity
    #expect(DeviceConversation.problem(of: p)?.contains("learning rate") == true)
    p.device.optimizer.learningRate = 0.1
    p.device.optimizer.schedule = .step(stepSize: 0, gamma: 0.5)
    #expect(DeviceConversation.problem(of: p)?.contains("schedule") == true)
    p.device.optimizer.schedule = .cosine(rounds: 10, minimumLearningRate: 0.2)
    #expect(DeviceConversation.problem(of: p)?.contains("schedule") == true)
    p.device.optimizer.schedule = .cosine(rounds: 10, minimumLearningRate: 0.01)
    #expect(DeviceConversation.problem(of: p) == nil)
  }
}
