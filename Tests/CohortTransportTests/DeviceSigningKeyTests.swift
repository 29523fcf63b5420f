import CohortCore
import CohortOperations
import CohortProtocol
import CohortSecAgg
import Foundation
import SwiftASN1
import Testing
import X509

@testable import CohortTransport

/// The signing-key extension of device certificates and the checks both ends make on it.
@Suite struct DeviceSigningKeyTests {
  /// Devices 0…3 of one CA, and one device of another CA, made once.
  static let pki = try! DevelopmentCertificates.make(devices: 4, firstDevice: 0)
  static let stranger = try! DevelopmentCertificates.make(devices: 1, firstDevice: 0)

  static func der(_ pem: String) throws -> [UInt8] {
    try Certificate(pemEncoded: pem).serializeAsPEM().derBytes
  }

  /// `der` with one byte of the signing key in its extension flipped: the body no longer matches
  /// the CA's signature.
  static func tampered(_ der: [UInt8]) throws -> [UInt8] {
    let head = DeviceSigningKeyExtension.subjectPublicKeyInfoHead
    let at = try #require(
      (0...(der.count - head.count)).first { der[$0..<($0 + head.count)].elementsEqual(head) })
    var out = der
    out[at + head.count + 5] ^= 0x01
    return out
  }

  @Test func theCertificateCarriesThePublicHalfOfTheSigningKeyFile() throws {
    for device in Self.pki.devices {
      let certificate = try Certificate(pemEncoded: device.certificatePEM)
      let found = certificate.extensions.filter { $0.oid == DeviceSigningKeyExtension.oid }
      #expect(found.count == 1)
      #expect(found.first?.critical == false)
      #expect(
        DeviceSigningKeyExtension.oid
          == (try ASN1ObjectIdentifier(dotRepresentation: "2.25.7311430286612045917")))
      // The value is an RFC 8410 SubjectPublicKeyInfo: 44 bytes, Ed25519's algorithm identifier.
      #expect(found.first?.value.count == 44)
      var secret = try DeviceSigningKeyFile.secretKey(
        pem: device.signingKeyPEM, source: device.signingKeyFileName)
      let publicKey = try #require(DeviceSigningKeyExtension.publicKey(of: certificate))
      #expect(Array(secret.suffix(32)) == publicKey)
      // What the key file signs, the certificate's key verifies (libsodium on both sides).
      let message = Array("round 1, device \(device.number)".utf8)
      #expect(
        SecAggCrypto.verify(SecAggCrypto.sign(message, secretKey: secret), of: message, publicKey: publicKey))
      SecAggCrypto.zero(&secret)
      #expect(device.signingKeyPEM.hasPrefix("-----BEGIN PRIVATE KEY-----\n"))
    }
    // Every device has its own key.
    let keys = try Self.pki.devices.map { try Certificate(pemEncoded: $0.certificatePEM) }.map {
      DeviceSigningKeyExtension.publicKey(of: $0)
    }
    #expect(Set(keys).count == Self.pki.devices.count)
  }

  @Test func aSigningKeyFileThatIsNotAnEd25519KeyIsRefused() throws {
    let device = Self.pki.devices[0]
    for text in [device.keyPEM, "not a key", device.certificatePEM] {
      let error = try #require(throws: CohortError.self) {
        try DeviceSigningKeyFile.secretKey(pem: text, source: "f.key")
      }
      #expect(error.message.contains("f.key"))
    }
  }

  @Test func aDeviceCertificateVerifiesAgainstItsCAAndNamesTheDevice() async throws {
    let verifier = try DeviceCertificateVerifier(caPEM: Self.pki.caCertificatePEM)
    for device in Self.pki.devices {
      let der = try Self.der(device.certificatePEM)
      let verified = try await verifier.verify(der: der, device: device.number).get()
      #expect(verified.device == device.number)
      #expect(verified.der == der)
      #expect(
        verified.signingPublicKey == DeviceSigningKeyExtension.publicKey(of: try Certificate(derEncoded: der))
      )
    }
  }

  @Test func certificatesThatCannotVouchForAKeyAreRefusedWithTheirReason() async throws {
    let verifier = try DeviceCertificateVerifier(caPEM: Self.pki.caCertificatePEM)
    let own = try Self.der(Self.pki.devices[1].certificatePEM)
    let cases: [(String, [UInt8], Int?, DeviceCertificateRefusal.Reason)] = [
      ("another CA's device", try Self.der(Self.stranger.devices[0].certificatePEM), 0, .untrusted),
      ("a tampered key", try Self.tampered(own), 1, .untrusted),
      ("the server's certificate", try Self.der(Self.pki.serverCertificatePEM), nil, .untrusted),
      ("another device's certificate", own, 2, .wrongDevice),
      ("not a certificate", [0x30, 0x03, 0x02, 0x01, 0x00], 1, .unreadable),
    ]
    for (name, der, device, reason) in cases {
      let result = await verifier.verify(der: der, device: device)
      guard case .failure(let refusal) = result else {
        Issue.record("\(name) was accepted")
        continue
      }
      #expect(refusal.reason == reason, "\(name): \(refusal)")
    }
    // A certificate without the extension (the server's, checked for form only).
    let formOnly = await DeviceCertificateVerifier.formOnly.verify(
      der: try Self.der(Self.pki.serverCertificatePEM))
    #expect(formOnly.failure?.reason == .noSigningKey, "\(formOnly)")
  }

  @Test func loadingAnIdentityChecksTheKeyTheCertificateAndTheCA() async throws {
    let pki = Self.pki
    let device = pki.devices[1]
    let identity = try await DeviceSigningIdentity.load(
      certificatePEM: device.certificatePEM, signingKeyPEM: device.signingKeyPEM, caPEM: pki.caCertificatePEM,
      device: 1)
    #expect(identity.certificate.device == 1)
    let refusals: [(String, String, String, Int, String)] = [
      ("another device's key", device.certificatePEM, pki.devices[2].signingKeyPEM, 1, "is not the key"),
      ("another device's number", device.certificatePEM, device.signingKeyPEM, 2, "names device 1"),
      (
        "another CA", Self.stranger.devices[0].certificatePEM, Self.stranger.devices[0].signingKeyPEM, 0, "CA"
      ),
    ]
    for (name, certificate, key, number, detail) in refusals {
      let error = await #expect(throws: CohortError.self, "\(name)") {
        try await DeviceSigningIdentity.load(
          certificatePEM: certificate, signingKeyPEM: key, caPEM: pki.caCertificatePEM, device: number)
      }
      #expect(error?.message.contains(detail) == true, "\(name): \(String(describing: error))")
    }
  }

  /// What a device checks in the certificates a (possibly malicious) server relays for a round.
  @Test func aDeviceTakesItsPeersKeysOnlyFromCertificatesItCanVerify() async throws {
    let pki = Self.pki
    let own = pki.devices[1]
    let identity = try await DeviceSigningIdentity.load(
      certificatePEM: own.certificatePEM, signingKeyPEM: own.signingKeyPEM, caPEM: pki.caCertificatePEM,
      device: 1)
    let ders = try pki.devices.map { try Self.der($0.certificatePEM) }
    // Device d is member d + 1; this device (1) is member 2.
    let honest = ders.enumerated().map { (index: $0.offset + 1, der: $0.element) }
    let keys = try await identity.identityKeys(peers: honest, count: 4, ownIndex: 2).get()
    #expect(keys.count == 4)
    for (i, der) in ders.enumerated() {
      #expect(
        keys[SecAggIndex(i + 1)] == DeviceSigningKeyExtension.publicKey(of: try Certificate(derEncoded: der)))
    }

    func substituted(_ index: Int, _ der: [UInt8]) -> [(index: Int, der: [UInt8])] {
      honest.map { $0.index == index ? (index, der) : $0 }
    }
    let attacks: [(String, [(index: Int, der: [UInt8])], DeviceCertificateRefusal.Reason)] = [
      (
        "a key certified by another CA",
        substituted(3, try Self.der(Self.stranger.devices[0].certificatePEM)), .untrusted
      ),
      ("a tampered key", substituted(4, try Self.tampered(ders[3])), .untrusted),
      ("another certificate at this device's index", substituted(2, ders[0]), .wrongDevice),
      ("one device twice", substituted(4, ders[0]), .wrongDevice),
      ("a member without a certificate", Array(honest.dropLast()), .missing),
    ]
    for (name, peers, reason) in attacks {
      let result = await identity.identityKeys(peers: peers, count: 4, ownIndex: 2)
      #expect(result.failure?.reason == reason, "\(name): \(result)")
    }
  }
}

extension Result {
  var failure: Failure? {
    if case .failure(let f) = self { return f }
    return nil
  }
}
