// The load-test rig: `count` VMs in the loadgens subnet, each with
// `secondaryIps` extra private addresses so that one VM opens more than 55k
// connections to one broker address (ringmq-bench --ifaddr), provisioned
// by deploy/azure/cloud-init-loadgen.yaml (installs ringmq-bench).

param location string
param namePrefix string
param count int
param secondaryIps int
param vmSize string
param adminUsername string
param adminSshPublicKey string
param subnetId string
@description('Give each VM a public address for SSH (the subnet NSG limits the source).')
param publicSsh bool
@secure()
param customData string

resource pip 'Microsoft.Network/publicIPAddresses@2023-11-01' = [for i in range(0, count): if (publicSsh) {
  name: '${namePrefix}-loadgen-${i}-ip'
  location: location
  sku: {
    name: 'Standard'
  }
  properties: {
    publicIPAllocationMethod: 'Static'
  }
}]

resource nic 'Microsoft.Network/networkInterfaces@2023-11-01' = [for i in range(0, count): {
  name: '${namePrefix}-loadgen-${i}-nic'
  location: location
  properties: {
    enableAcceleratedNetworking: true
    ipConfigurations: [for j in range(0, secondaryIps + 1): {
      name: 'ip${j}'
      properties: {
        primary: j == 0
        privateIPAllocationMethod: 'Dynamic'
        subnet: {
          id: subnetId
        }
        publicIPAddress: (j == 0 && publicSsh) ? {
          id: resourceId('Microsoft.Network/publicIPAddresses', '${namePrefix}-loadgen-${i}-ip')
        } : null
      }
    }]
  }
  dependsOn: [
    pip
  ]
}]

resource vm 'Microsoft.Compute/virtualMachines@2024-03-01' = [for i in range(0, count): {
  name: '${namePrefix}-loadgen-${i}'
  location: location
  properties: {
    hardwareProfile: {
      vmSize: vmSize
    }
    osProfile: {
      computerName: '${namePrefix}-loadgen-${i}'
      adminUsername: adminUsername
      // The rig is driven over SSH (rig-run.sh): no VM extensions.
      allowExtensionOperations: false
      customData: customData
      linuxConfiguration: {
        disablePasswordAuthentication: true
        provisionVMAgent: true
        ssh: {
          publicKeys: [
            {
              path: '/home/${adminUsername}/.ssh/authorized_keys'
              keyData: adminSshPublicKey
            }
          ]
        }
      }
    }
    storageProfile: {
      imageReference: {
        publisher: 'Canonical'
        offer: 'ubuntu-24_04-lts'
        sku: 'server'
        version: 'latest'
      }
      osDisk: {
        createOption: 'FromImage'
        managedDisk: {
          storageAccountType: 'Premium_LRS'
        }
      }
    }
    networkProfile: {
      networkInterfaces: [
        {
          id: nic[i].id
        }
      ]
    }
    securityProfile: {
      encryptionAtHost: true
    }
    diagnosticsProfile: {
      bootDiagnostics: {
        enabled: true
      }
    }
  }
}]

output machines array = [for i in range(0, count): {
  name: vm[i].name
  privateIp: nic[i].properties.ipConfigurations[0].properties.privateIPAddress
  publicIp: publicSsh ? pip[i].properties.ipAddress : ''
}]
