import CohortCore
import CohortML
import Testing

@Suite struct ModelTests {
  @Test func parameterCounts() {
    #expect(Network.cnn(inputShape: [1, 28, 28], classes: 10).layout.count == 1_663_370)
    #expect(Network.mlp(inputs: 784, hidden: [200, 200], classes: 10).layout.count == 199_210)
    #expect(Network.logisticRegression(inputs: 60, classes: 10).layout.count == 610)
  }

  @Test func cnnLayoutAndShapes() {
    let cnn = Network.cnn(inputShape: [1, 28, 28], classes: 10)
    #expect(cnn.inputShape == [1, 28, 28])
    #expect(cnn.inputCount == 784)
    #expect(cnn.classes == 10)
    let tensors = cnn.layout.tensors
    #expect(
      tensors.map(\.name) == [
        "conv0.weight", "conv0.bias", "conv1.weight", "conv1.bias",
        "dense0.weight", "dense0.bias", "dense1.weight", "dense1.bias",
      ])
    #expect(
      tensors.map(\.shape) == [
        [32, 1, 5, 5], [32], [64, 32, 5, 5], [64], [512, 3136], [512], [10, 512], [10],
      ])
  }

  @Test func mlpLayout() {
    let mlp = Network.mlp(inputs: 784, hidden: [200, 200], classes: 10)
    #expect(mlp.layers == [.dense(outputs: 200), .relu, .dense(outputs: 200), .relu, .dense(outputs: 10)])
    #expect(mlp.layout.tensors.map(\.shape) == [[200, 784], [200], [200, 200], [200], [10, 200], [10]])
  }

  @Test func flopsCountForwardAndBackwardMultiplyAdds() {
    // Forward 198,800 multiply-adds; weight gradients as many; input gradients of the two upper
    // layers 42,000; times 2.
    #expect(Network.mlp(inputs: 784, hidden: [200, 200], classes: 10).flopsPerExample() == 879_200)
    #expect(Network.logisticRegression(inputs: 60, classes: 10).flopsPerExample() == 2_400)
    let cnn = Network.cnn(inputShape: [1, 28, 28], classes: 10).flopsPerExample()
    let conv0: Double = 32 * 25 * 784
    let conv1: Double = 64 * 800 * 196
    let dense: Double = 3136 * 512 + 512 * 10
    // The first convolution computes no input gradient.
    let expected: Double = 2 * (2 * conv0 + 3 * (conv1 + dense))
    #expect(cnn == expected)
  }

  @Test func initialWeightsAreSeededAndScaled() {
    let seed: UInt64 = 41
    let network = Network.mlp(inputs: 20, hidden: [30], classes: 5)
    var a = RandomStream(seed: seed, purpose: "init")
    var b = RandomStream(seed: seed, purpose: "init")
    var c = RandomStream(seed: seed + 1, purpose: "init")
    let first = network.initialWeights(&a)
    #expect(first == network.initialWeights(&b), "seed \(seed)")
    #expect(first != network.initialWeights(&c), "seed \(seed)")
    #expect(first[tensor: "dense0.bias"].allSatisfy { $0 == 0 })
    #expect(first[tensor: "dense1.bias"].allSatisfy { $0 == 0 })
    // He uniform before a ReLU, Glorot uniform into the softmax.
    let he = Float((6.0 / 20).squareRoot())
    let glorot = Float((6.0 / 35).squareRoot())
    let hidden = first[tensor: "dense0.weight"]
    let output = first[tensor: "dense1.weight"]
    #expect(hidden.allSatisfy { abs($0) <= he } && hidden.contains { abs($0) > 0.9 * he }, "seed \(seed)")
    #expect(
      output.allSatisfy { abs($0) <= glorot } && output.contains { abs($0) > 0.9 * glorot }, "seed \(seed)")
  }
}
