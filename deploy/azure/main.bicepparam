// Parameters for deploy/azure/main.bicep. Copy this file, fill in the three
// values marked REQUIRED, and deploy:
//   az deployment group create -g ringmq -f deploy/azure/main.bicep -p deploy/azure/main.bicepparam
using 'main.bicep'

// REQUIRED: your SSH public key (cat ~/.ssh/id_ed25519.pub).
param adminSshPublicKey = 'ssh-ed25519 AAAA... replace-me'

// REQUIRED: who may reach the MQTT ports. Without passwordFile below anyone
// in this range may publish and subscribe: use your devices' (or your own)
// address range, not 'Internet'. 203.0.113.0/24 is a documentation range
// that matches nobody.
param mqttSourcePrefix = '203.0.113.0/24'

// REQUIRED, one of the two: a release binary and its sha256, or a git ref
// to build from (about 10 minutes on a D8s_v5 at first boot).
param releaseUrl = ''
param releaseSha256 = ''
param sourceRef = 'main'

// 1 until clustering (#17): separate brokers do not exchange messages.
param instanceCount = 1
param vmSize = 'Standard_D8s_v5'
param idleTimeoutMinutes = 10

// TLS on 8883 (and 8084 for WebSocket): the certificate chain and its key.
// Keep the key in Key Vault (README.md, TLS) and read it at deployment:
//   param tlsPrivateKeyPem = az.getSecret('<subscription id>', '<vault resource group>', '<vault>', 'ringmq-tls-key')
param enableTls = false
param tlsCertificatePem = ''
param enableWebSocket = false

// Users: a password file made with `ringmq passwd FILE USER` (hashes only);
// from Key Vault the same way, or loadTextContent('passwd') beside this file.
// Empty: anonymous clients allowed. ACL rules in Mosquitto's syntax.
param aclFile = ''

param enableNatGateway = false
// A data disk for the durable log (retained messages today), 0 = memory
// only; durability always | interval | none.
param dataDiskSizeGB = 0
param durability = 'always'

// The load-test rig: loadgenCount VMs with loadgenSecondaryIps extra
// addresses each, reachable over SSH from sshSourcePrefix.
param loadgenCount = 0
param loadgenSecondaryIps = 7
param sshSourcePrefix = ''
