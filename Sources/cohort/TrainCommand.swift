import ArgumentParser
import CohortCore
import CohortML
import Foundation
import Logging

struct TrainCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "train",
    abstract: "Train a scenario's model centrally, as one client holding all training data.",
    discussion: """
      The baseline every federated run is compared with: the plan's model, optimizer and batch size \
      trained on the pooled training data of every device, evaluated on the scenario's test set \
      after each epoch. Without a scenario it uses the built-in default (FedProx Synthetic(1, 1), \
      logistic regression). Deterministic for a given scenario and seed.
      """)

  @OptionGroup var scenario: ScenarioOptions

  @Option(help: "Epochs over the pooled training data.")
  var epochs: Int = 20

  @Option(help: "Override the plan's learning rate.")
  var learningRate: Double?

  @Option(help: "Override the plan's batch size.")
  var batchSize: Int?

  @Flag(help: "Print a JSON summary instead of the table.")
  var json = false

  func validate() throws {
    guard epochs >= 1 else { throw ValidationError("--epochs must be at least 1") }
    if let learningRate, !(learningRate > 0) { throw ValidationError("--learning-rate must be above 0") }
    if let batchSize, batchSize < 1 { throw ValidationError("--batch-size must be at least 1") }
  }

  func run() throws {
    var logger = Logger(label: "cohort.train")
    logger.logLevel = .notice
    let s = try scenario.load()
    let loadStart = ContinuousClock.now
    let data: FederatedData
    do throws(CohortError) { data = try FederatedData.load(s) } catch { throw error.exit() }
    logger.info("loaded data", metadata: ["seconds": "\(ContinuousClock.now - loadStart)"])

    BLAS.useOneThread()
    let network = Network(plan: s.plan.model)
    var configuration = TrainingConfiguration(plan: s.plan.device)
    configuration.epochs = 1
    if let learningRate { configuration.optimizer.learningRate = Float(learningRate) }
    if let batchSize { configuration.batchSize = batchSize }
    var weights: Weights
    do throws(CohortError) {
      weights = try network.initialWeights(plan: s.plan.model, seed: s.seed)
    } catch { throw error.exit() }
    let trainer = LocalTrainer(network: network)

    if !json {
      print(
        "central training: \(s.plan.model.kind.rawValue), \(Format.count(network.layout.count)) parameters, "
          + "\(Format.count(data.train.count)) train / \(Format.count(data.test.count)) test examples, "
          + "batch \(configuration.batchSize), learning rate \(configuration.optimizer.learningRate), seed \(s.seed)"
      )
      print("epoch  train loss  test loss  test accuracy  examples/s")
    }
    var history: [Evaluation] = []
    var trainLoss = 0.0
    for epoch in 1...epochs {
      var rng = RandomStream(seed: s.seed, purpose: "central-train", round: epoch)
      let start = ContinuousClock.now
      let result = trainer.train(from: weights, on: data.train, configuration: configuration, rng: &rng)
      let elapsed = (ContinuousClock.now - start) / .seconds(1)
      weights = result.weights
      trainLoss = result.meanLoss
      let evaluation = network.evaluate(weights, on: data.test)
      history.append(evaluation)
      if !json {
        print(
          String(
            format: "%5d  %10.4f  %9.4f  %13.4f  %10.0f", epoch, result.meanLoss, evaluation.loss,
            evaluation.accuracy, Double(result.examples) / max(elapsed, 1e-9)))
      }
    }
    let final = history.last!
    let best = history.map(\.accuracy).max() ?? 0
    if json {
      let summary: [String: Any] = [
        "scenario": scenario.path ?? BuiltInScenario.name, "seed": s.seed, "epochs": epochs,
        "train_loss": trainLoss, "test_loss": final.loss, "test_accuracy": final.accuracy,
        "best_test_accuracy": best, "parameters": network.layout.count,
      ]
      let data = try JSONSerialization.data(withJSONObject: summary, options: [.sortedKeys])
      print(String(decoding: data, as: UTF8.self))
    } else {
      print("final test accuracy \(Format.fixed(final.accuracy, 4)) (best \(Format.fixed(best, 4)))")
    }
  }
}
