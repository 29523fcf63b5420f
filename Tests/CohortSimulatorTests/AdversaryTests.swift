import CohortCore
import CohortML
import CohortSimulator
import Testing

@Suite struct AdversaryTests {
  @Test func theShareOfAttackersIsTheFraction() {
    let adversaries = Adversaries(plan: AdversaryPlan(fraction: 0.2, attack: .signFlip(factor: 4)), seed: 9)
    let attackers = (0..<10_000).filter { adversaries.includes($0) }.count
    #expect(abs(attackers - 2_000) < 150, "seed 9: \(attackers) attackers of 10,000")
    // The same devices attack whatever else changes in the scenario.
    #expect((0..<100).filter { adversaries.includes($0) } == (0..<100).filter { adversaries.includes($0) })
  }

  @Test func attackedRunsAreWorseThanCleanOnes() async throws {
    // 40% of devices send their updates negated: FedAvg's model is pulled away from the honest
    // direction, so it ends less accurate than the clean run (same data, same seed).
    let clean = try Scenario.parse(
      yaml: """
        plan:
          name: learnable
          model: {kind: logistic_regression, inputs: 60, classes: 10}
          device: {epochs: 2, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
          server: {rounds: 8, cohort: {goal: 12, over_selection: 1.0, minimum_fraction: 0.75}}
        data: {kind: synthetic_fedprox, alpha: 0, beta: 0, iid: true, devices: 120, max_samples: 150}
        devices: {check_in_interval: 1m}
        seed: 5
        """, file: "learnable.yaml")
    var attacked = clean
    attacked.adversaries = AdversaryPlan(fraction: 0.4, attack: .signFlip(factor: 1))
    let a = try await simulate(clean).0
    let b = try await simulate(attacked).0
    #expect(
      (b.finalAccuracy ?? 1) < (a.finalAccuracy ?? 0) - 0.05,
      "seed 5: clean \(a.finalAccuracy ?? -1), attacked \(b.finalAccuracy ?? -1)")
  }
}

@Suite struct AttackTests {
  let layout = WeightsLayout([TensorSpec("w", [3])])

  @Test func eachAttackChangesWhatIsSent() {
    let update = Weights(layout: layout, values: [1, -2, 3])
    func sent(_ attack: AdversaryPlan.Attack) -> [Float] {
      Adversaries(plan: AdversaryPlan(fraction: 1, attack: attack), seed: 1).attacked(
        update, device: 4, round: 2
      ).values
    }
    #expect(sent(.signFlip(factor: 1)) == [-1, 2, -3])
    #expect(sent(.signFlip(factor: 4)) == [-4, 8, -12])
    #expect(sent(.scale(10)) == [10, -20, 30])
    #expect(sent(.labelFlip) == [1, -2, 3])
    let noise = sent(.gaussianNoise(standardDeviation: 5))
    #expect(noise != [1, -2, 3] && noise == sent(.gaussianNoise(standardDeviation: 5)))
  }

  @Test func labelFlipPoisonsOnlyTheDevicesOwnExamples() {
    let data = Dataset(features: [0, 1, 2, 3], labels: [0, 1, 2, 3], featureShape: [1], classes: 4)
    let adversaries = Adversaries(plan: AdversaryPlan(fraction: 1, attack: .labelFlip), seed: 1)
    #expect(adversaries.poisonsData)
    let own = adversaries.poisoned(data, indices: [1, 3])
    #expect(own.labels == [2, 0] && own.features == [1, 3])
  }
}
