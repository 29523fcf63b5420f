import CohortCore
import Foundation
import Testing

@Suite struct SHA256Tests {
  // FIPS 180-2 test vectors.
  @Test func knownVectors() {
    #expect(
      SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    #expect(SHA256.hex([UInt8]()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    #expect(
      SHA256.hex(Data("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))
        == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    #expect(SHA256.digest(Array("abc".utf8)).count == 32)
    let viaPointer = Array("abc".utf8).withUnsafeBytes { SHA256.hex($0) }
    #expect(viaPointer == SHA256.hex(Array("abc".utf8)))
  }

  @Test func weightsHashTheirLittleEndianFloat32Bytes() {
    let w = Weights(layout: WeightsLayout([TensorSpec("v", [2])]), values: [1.0, -2.5])
    // hashlib.sha256(struct.pack('<2f', 1.0, -2.5)).hexdigest()
    #expect(w.sha256 == "48943f7a0ea247f8e3c9386d0c5822fe181d323a9289980426638cc4e72a43e1")
    #expect(w.sha256 == SHA256.hex([0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0] as [UInt8]))
    // The layout is not hashed: the same numbers under other names hash the same.
    let renamed = Weights(layout: WeightsLayout([TensorSpec("w", [1, 2])]), values: [1.0, -2.5])
    #expect(renamed.sha256 == w.sha256)
  }

  @Test func planCanonicalJSONIsSortedAndStable() throws {
    let plan = Plan(name: "p", model: ModelPlan(kind: .logisticRegression, inputShape: [60], classes: 10))
    let json = String(decoding: plan.canonicalJSON, as: UTF8.self)
    let keys = ["compression", "device", "model", "name", "privacy", "secureAggregation", "server"]
    let positions = keys.map { json.range(of: "\"\($0)\":")!.lowerBound }
    #expect(positions == positions.sorted(), "\(json)")
    #expect(try JSONDecoder().decode(Plan.self, from: plan.canonicalJSON) == plan)
    #expect(plan.sha256 == SHA256.hex(plan.canonicalJSON))
    #expect(plan.sha256 == Plan(name: "p", model: plan.model).sha256)
    var other = plan
    other.server.rounds += 1
    #expect(other.sha256 != plan.sha256)
  }
}
