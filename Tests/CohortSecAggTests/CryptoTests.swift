import Testing

@testable import CohortSecAgg

@Suite struct CryptoTests {
  @Test func keyAgreementIsSymmetric() throws {
    let a = SecAggCrypto.keyAgreementPair(seed: [UInt8](repeating: 1, count: 32))
    let b = SecAggCrypto.keyAgreementPair(seed: [UInt8](repeating: 2, count: 32))
    let ab = try #require(
      SecAggCrypto.agree(
        secretKey: a.secretKey, ownPublicKey: a.publicKey, peerPublicKey: b.publicKey, ownIndex: 1,
        peerIndex: 2))
    let ba = try #require(
      SecAggCrypto.agree(
        secretKey: b.secretKey, ownPublicKey: b.publicKey, peerPublicKey: a.publicKey, ownIndex: 2,
        peerIndex: 1))
    #expect(ab == ba)
    #expect(SecAggCrypto.publicKey(ofSecret: a.secretKey) == a.publicKey)
  }

  @Test func maskCancelsAndSpansBlocks() {
    let key = [UInt8](repeating: 7, count: 32)
    var v = (0..<10_000).map { UInt32($0) }
    SecAggCrypto.addMask(key: key, sign: 1, into: &v)
    #expect(v[0] != 0 || v[1] != 1)
    // The second 4096-word block must continue the keystream, not repeat the first.
    #expect(Array(v[4096..<4106]) != Array(v[0..<10]).enumerated().map { $0.element &+ 4096 })
    SecAggCrypto.addMask(key: key, sign: -1, into: &v)
    #expect(v == (0..<10_000).map { UInt32($0) })
    // The streamed mask equals the one-shot keystream.
    var z = [UInt32](repeating: 0, count: 5000)
    SecAggCrypto.addMask(key: key, sign: 1, into: &z)
    let bytes = SecAggCrypto.stream(key: key, count: 20_000)
    let words = (0..<5000).map { (i: Int) -> UInt32 in
      var w: UInt32 = 0
      for b in 0..<4 { w |= UInt32(bytes[4 * i + b]) << UInt32(8 * b) }
      return w
    }
    #expect(z == words)
  }

  @Test func aeadRejectsTamperingAndWrongAssociatedData() throws {
    let key = [UInt8](repeating: 3, count: 32)
    let nonce = [UInt8](repeating: 0, count: 24)
    let sealed = SecAggCrypto.seal([1, 2, 3], key: key, nonce: nonce, associatedData: [9])
    #expect(SecAggCrypto.open(sealed, key: key, nonce: nonce, associatedData: [9]) == [1, 2, 3])
    var tampered = sealed
    tampered[0] ^= 1
    #expect(SecAggCrypto.open(tampered, key: key, nonce: nonce, associatedData: [9]) == nil)
    #expect(SecAggCrypto.open(sealed, key: key, nonce: nonce, associatedData: [8]) == nil)
    #expect(SecAggCrypto.open(Array(sealed.prefix(5)), key: key, nonce: nonce, associatedData: [9]) == nil)
  }

  @Test func signaturesVerify() {
    let pair = SecAggCrypto.signingPair(seed: [UInt8](repeating: 5, count: 32))
    let sig = SecAggCrypto.sign([1, 2, 3], secretKey: pair.secretKey)
    #expect(SecAggCrypto.verify(sig, of: [1, 2, 3], publicKey: pair.publicKey))
    #expect(!SecAggCrypto.verify(sig, of: [1, 2, 4], publicKey: pair.publicKey))
  }

  @Test func secretStreamIsDeterministicAndZeroes() {
    var a = SecretStream(key: [UInt8](repeating: 4, count: 32))
    var b = SecretStream(key: [UInt8](repeating: 4, count: 32))
    let xs = (0..<1000).map { _ in a.next() }
    #expect(xs == (0..<1000).map { _ in b.next() })
    #expect(Set(xs).count == 1000)
    var secret: [UInt8] = [1, 2, 3]
    SecAggCrypto.zero(&secret)
    #expect(secret == [0, 0, 0])
  }
}
