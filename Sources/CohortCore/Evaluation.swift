/// A model's mean cross-entropy and accuracy on a set of examples (both 0 when it is empty):
/// what central evaluation computes, and what a device reports of the model it received.
public struct Evaluation: Sendable, Hashable, Codable {
  public var loss: Double
  public var accuracy: Double
  public var examples: Int

  public init(loss: Double, accuracy: Double, examples: Int) {
    self.loss = loss
    self.accuracy = accuracy
    self.examples = examples
  }
}
